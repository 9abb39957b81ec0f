// Where a pty pair's other ends are in the tree, and its controlling-
// terminal state: the session it is the ctty of and its foreground group.
//
// The restore rebuilds them in the session leader: TIOCSCTTY when its slave
// fd is installed (after_install), TIOCSPGRP once every group exists
// (after_tree, which runs in the first process of the tree that holds the
// File). The dump refuses what that cannot rebuild.
#include <fmt/format.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <charconv>
#include <set>

#include "kinds/pty_internal.h"
#include "sys/pidfds.h"
#include "sys/proc.h"

namespace stasis::kinds::pty {
namespace {

bool CannotBeTty(const std::string& link) {
  return link.starts_with("socket:") || link.starts_with("pipe:") ||
         link.starts_with("anon_inode:");
}

Result<struct stat> StatFd(pid_t pid, int fd) {
  struct stat st;
  std::string path = fmt::format("/proc/{}/fd/{}", pid, fd);
  if (stat(path.c_str(), &st) < 0) return Error::Errno("stat " + path);
  return st;
}

Result<sys::proc::ProcStatus> ReadStatus(pid_t pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/status", pid)));
  return sys::proc::ParseStatus(text);
}

std::set<pid_t> TreePids(const DumpContext& ctx) {
  std::set<pid_t> pids;
  for (const FdIndexEntry& e : ctx.fd_index) pids.insert(e.pid);
  return pids;
}

// A host pid as the tree's own PID namespace numbers it (as dump.cc's
// SetIds records Process.pid).
Result<int> TreePid(pid_t host) {
  sys::proc::ProcStatus st = STASIS_TRY(ReadStatus(host));
  return st.ns_pid.empty() ? host : st.ns_pid.back();
}

// The tree's number of a process group given by its host number: through a
// member of the tree (as SetIds records Process.pgid), else through its
// leader when that is a process of the tree without fds (a zombie).
Result<int> TreePgid(const DumpContext& ctx, pid_t host_pgid, const std::string& what) {
  std::set<pid_t> pids = TreePids(ctx);
  for (pid_t pid : pids) {
    std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/stat", pid)));
    if (STASIS_TRY(sys::proc::ParseStat(text)).pgrp != host_pgid) continue;
    sys::proc::ProcStatus st = STASIS_TRY(ReadStatus(pid));
    return st.ns_pgid.empty() ? host_pgid : st.ns_pgid.back();
  }
  Result<sys::proc::ProcStatus> leader = ReadStatus(host_pgid);
  if (leader.ok() && pids.count(leader->ppid) && !leader->ns_pgid.empty()) {
    return leader->ns_pgid.back();
  }
  return Error::Unsupported(fmt::format(
      "{}: its foreground process group {} has no process in the dumped tree", what, host_pgid));
}

// after_tree runs once per File, in the first process (tree order) that
// holds it: the leader must be that process for one of its slave Files.
Status CheckLeaderRunsAfterTree(const DumpContext& ctx, pid_t leader,
                                const std::vector<FdRef>& slaves, const std::string& what) {
  std::string other;
  for (const FdRef& mine : slaves) {
    if (mine.pid != leader) continue;
    bool first = true;
    for (const FdIndexEntry& e : ctx.fd_index) {
      if (e.pid == leader) break;  // the leader's own fds come in one run
      bool is_slave = false;
      for (const FdRef& s : slaves) is_slave |= s.pid == e.pid && s.fd == e.fd;
      if (is_slave && STASIS_TRY(sys::SameFile(e.pid, e.fd, leader, mine.fd))) {
        first = false;
        other = fmt::format("pid {} fd {}", e.pid, e.fd);
        break;
      }
    }
    if (first) return Ok();
  }
  return Error::Unsupported(fmt::format(
      "{}: its session leader pid {} shares its open file description of the terminal with {}, "
      "which comes first in the tree; restoring the foreground group from there is not "
      "supported yet",
      what, leader, other));
}

}  // namespace

std::optional<uint32_t> TtyIndex(const sys::proc::FdInfo& info) {
  for (const auto& [key, value] : info.extra) {
    if (key != "tty-index") continue;
    uint32_t index = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), index);
    if (ec != std::errc() || end != value.data() + value.size() || value.empty()) return {};
    return index;
  }
  return {};
}

bool IsMasterRdev(dev_t rdev) { return major(rdev) == kPtmxMajor && minor(rdev) == kPtmxMinor; }

bool IsSlaveRdev(dev_t rdev) {
  return major(rdev) >= kSlaveMajorFirst && major(rdev) <= kSlaveMajorLast;
}

uint32_t SlaveIndex(dev_t rdev) { return (major(rdev) - kSlaveMajorFirst) * 256 + minor(rdev); }

Result<std::vector<FdRef>> SlaveFds(const DumpContext& ctx, dev_t devpts, dev_t rdev) {
  std::vector<FdRef> out;
  for (const FdIndexEntry& e : ctx.fd_index) {
    if (CannotBeTty(e.link)) continue;
    struct stat st = STASIS_TRY(StatFd(e.pid, e.fd));
    if (S_ISCHR(st.st_mode) && st.st_rdev == rdev && st.st_dev == devpts) {
      out.push_back({e.pid, e.fd});
    }
  }
  return out;
}

Result<std::vector<FdRef>> MasterFds(const DumpContext& ctx, uint32_t index) {
  std::vector<FdRef> out;
  for (const FdIndexEntry& e : ctx.fd_index) {
    if (CannotBeTty(e.link)) continue;
    struct stat st = STASIS_TRY(StatFd(e.pid, e.fd));
    if (!S_ISCHR(st.st_mode) || !IsMasterRdev(st.st_rdev)) continue;
    std::string text =
        STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/fdinfo/{}", e.pid, e.fd)));
    if (TtyIndex(STASIS_TRY(sys::proc::ParseFdInfo(text))) == index) out.push_back({e.pid, e.fd});
  }
  return out;
}

Result<image::PtyJob> DumpJob(const DumpContext& ctx, int master, const std::vector<FdRef>& slaves,
                              const std::string& what) {
  image::PtyJob job;
  // On the master these answer for the slave whoever asks, in the
  // dumper's PID namespace.
  pid_t sid = 0, fg = 0;
  if (ioctl(master, TIOCGSID, &sid) < 0) {
    if (errno != ENOTTY) return Error::Errno(what + ": TIOCGSID");
    return job;  // nobody's controlling terminal
  }
  if (ioctl(master, TIOCGPGRP, &fg) < 0) return Error::Errno(what + ": TIOCGPGRP");
  bool leader_holds = false;
  for (const FdRef& s : slaves) leader_holds |= s.pid == sid;
  if (!leader_holds) {
    if (TreePids(ctx).count(sid)) {
      return Error::Unsupported(fmt::format(
          "{}: pid {}, the session leader whose controlling terminal this is, holds no fd on its "
          "slave; restoring that controlling terminal is not supported yet",
          what, sid));
    }
    return Error::Unsupported(fmt::format(
        "{}: it is the controlling terminal of session {}, whose leader is outside the dumped "
        "tree",
        what, sid));
  }
  job.set_session(STASIS_TRY(TreePid(sid)));
  if (fg == 0) return job;
  job.set_foreground_pgrp(STASIS_TRY(TreePgid(ctx, fg, what)));
  // A session leader leads its own group; a foreground group other than
  // that one is set again from the leader.
  if (fg != sid) STASIS_TRY(CheckLeaderRunsAfterTree(ctx, sid, slaves, what));
  return job;
}

std::string JobRecord(uint64_t dev, uint64_t ino, const image::PtyJob& job) {
  return fmt::format("pty:{}:{}:{}:{}", dev, ino, job.session(), job.foreground_pgrp());
}

std::optional<image::PtyJob> FindJobRecord(const std::set<std::string>& records, uint64_t dev,
                                           uint64_t ino) {
  std::string prefix = fmt::format("pty:{}:{}:", dev, ino);
  auto it = records.lower_bound(prefix);
  if (it == records.end() || !it->starts_with(prefix)) return {};
  std::string_view rest = std::string_view(*it).substr(prefix.size());
  size_t colon = rest.find(':');
  if (colon == std::string_view::npos) return {};
  int session = 0, fg = 0;
  std::string_view a = rest.substr(0, colon), b = rest.substr(colon + 1);
  if (std::from_chars(a.data(), a.data() + a.size(), session).ec != std::errc() ||
      std::from_chars(b.data(), b.data() + b.size(), fg).ec != std::errc()) {
    return {};
  }
  image::PtyJob job;
  job.set_session(session);
  job.set_foreground_pgrp(fg);
  return job;
}

}  // namespace stasis::kinds::pty
