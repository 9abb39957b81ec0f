// Parsers of /proc text and thin readers of /proc files.
//
// The parsers are pure functions over text (no I/O), so they are tested on
// captured fixtures. Malformed input yields ErrorCode::kInvalid with a
// message naming the file kind and the offending line, e.g.
//   "maps line 3: bad address range 'xyz'".
// The readers do the I/O and take the proc root as a parameter so tests can
// point them at a fake tree.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sys/result.h"

namespace stasis::sys::proc {

// One line of /proc/PID/maps.
struct MapsEntry {
  uint64_t start = 0;
  uint64_t end = 0;
  bool read = false;
  bool write = false;
  bool exec = false;
  bool shared = false;  // 's' rather than 'p'
  uint64_t pgoff = 0;
  uint32_t dev_major = 0;
  uint32_t dev_minor = 0;
  uint64_t inode = 0;
  // Verbatim: may be empty, contain spaces, end in " (deleted)" or name a
  // pseudo mapping ("[heap]", "[vvar_vclock]"). The kernel writes a newline
  // in a file name as "\012" but leaves backslashes alone, so a path that
  // contains "\012" is ambiguous; callers needing the exact file should use
  // /proc/PID/map_files instead.
  std::string path;
};

Result<std::vector<MapsEntry>> ParseMaps(std::string_view text);

// One mapping of /proc/PID/smaps. Sizes are in kB, as the kernel prints them.
struct SmapsEntry {
  MapsEntry map;
  uint64_t rss_kb = 0;
  uint64_t anonymous_kb = 0;
  uint64_t anon_huge_kb = 0;
  uint64_t swap_kb = 0;
  uint64_t private_dirty_kb = 0;
  std::vector<std::string> vm_flags;  // two-letter codes from "VmFlags:"
};

Result<std::vector<SmapsEntry>> ParseSmaps(std::string_view text);
bool HasVmFlag(const SmapsEntry& entry, std::string_view code);

// /proc/PID/status. Lines the running kernel may not print (Umask for a
// zombie or before 4.7, NoNewPrivs, Seccomp, Seccomp_filters, CapAmb, NS*)
// default to 0 / empty.
struct ProcStatus {
  std::string name;  // the kernel's "\n" and "\\" escapes undone
  uint32_t umask = 0;
  char state = '?';
  int tgid = 0;
  int pid = 0;
  int ppid = 0;
  int tracer_pid = 0;
  uint32_t uid[4] = {};  // real, effective, saved, filesystem
  uint32_t gid[4] = {};
  std::vector<uint32_t> groups;
  std::vector<int> ns_tgid;  // outermost namespace first
  std::vector<int> ns_pid;
  std::vector<int> ns_pgid;
  std::vector<int> ns_sid;
  int threads = 0;
  uint64_t sig_pnd = 0;
  uint64_t shd_pnd = 0;
  uint64_t sig_blk = 0;
  uint64_t sig_ign = 0;
  uint64_t sig_cgt = 0;
  uint64_t cap_inh = 0;
  uint64_t cap_prm = 0;
  uint64_t cap_eff = 0;
  uint64_t cap_bnd = 0;
  uint64_t cap_amb = 0;
  bool no_new_privs = false;
  int seccomp = 0;
  int seccomp_filters = 0;
};

Result<ProcStatus> ParseStatus(std::string_view text);

// /proc/PID/stat (or /proc/PID/task/TID/stat). Field numbers per proc(5).
// Without PTRACE_MODE_READ access the kernel reports the address fields as 0.
struct ProcStat {
  int pid = 0;
  std::string comm;  // raw: may hold spaces, parentheses, even newlines
  char state = '?';
  int ppid = 0;
  int pgrp = 0;
  int session = 0;
  int tty_nr = 0;
  int tpgid = 0;
  uint64_t flags = 0;
  int64_t nice = 0;
  int num_threads = 0;
  uint64_t start_code = 0;
  uint64_t end_code = 0;
  uint64_t start_stack = 0;
  uint64_t start_data = 0;
  uint64_t end_data = 0;
  uint64_t start_brk = 0;
  uint64_t arg_start = 0;
  uint64_t arg_end = 0;
  uint64_t env_start = 0;
  uint64_t env_end = 0;
  int exit_signal = 0;
};

Result<ProcStat> ParseStat(std::string_view text);

// /proc/PID/fdinfo/FD.
struct FdInfo {
  uint64_t pos = 0;
  uint32_t flags = 0;  // open(2) flags; octal in the file
  int mnt_id = 0;      // 0 when the kernel does not print it (< 3.15)
  uint64_t ino = 0;    // 0 when the kernel does not print it (< 5.14)
  // Each "lock:" line's text after the colon, trimmed, e.g.
  // "1: POSIX  ADVISORY  WRITE 3040 fe:00:10952903 0 EOF".
  std::vector<std::string> locks;
  // Every other line in order as (key, trimmed value), split at the first
  // colon, so "tfd:" keeps the rest of its line ("7 events: 19 data: ...").
  // inotify and fanotify lines have no colon after their first word
  // ("inotify wd:1 ino:3c51a ..."): their key is that word ("inotify").
  std::vector<std::pair<std::string, std::string>> extra;
};

Result<FdInfo> ParseFdInfo(std::string_view text);

// --- readers (these do I/O) --------------------------------------------------

// "ROOT/PID/REST", or "ROOT/PID" when rest is empty.
std::string ProcPath(pid_t pid, std::string_view rest, std::string_view root = "/proc");
// "ROOT/PID/task/TID/REST", or "ROOT/PID/task/TID" when rest is empty.
std::string TaskPath(pid_t pid, pid_t tid, std::string_view rest, std::string_view root = "/proc");

// The whole file, however large (/proc files report size 0, so it reads to
// EOF). ENOENT and ESRCH, which mean the process is gone, give kNotFound.
Result<std::string> ReadFile(const std::string& path);
Result<std::string> ReadLink(const std::string& path);

// Numeric entries of ROOT/PID/task, sorted.
Result<std::vector<int>> ListTasks(pid_t pid, std::string_view root = "/proc");
// Numeric entries of ROOT/PID/fd, sorted.
Result<std::vector<int>> ListFds(pid_t pid, std::string_view root = "/proc");
// Union of ROOT/PID/task/*/children, sorted. A child is listed under the
// thread that forked it, so every thread must be read. Threads that exit
// meanwhile are skipped; a children file missing on a live thread (kernel
// without CONFIG_PROC_CHILDREN) is kUnsupported rather than "no children".
Result<std::vector<int>> ListChildren(pid_t pid, std::string_view root = "/proc");

}  // namespace stasis::sys::proc
