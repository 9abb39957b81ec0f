#include "kinds/file_locks.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>

#include <charconv>
#include <chrono>
#include <map>
#include <optional>
#include <set>

#include "sys/pidfds.h"
#include "sys/proc.h"

namespace stasis::kinds::file_locks {
namespace {

struct DumpState {
  std::optional<std::string> proc_locks;
};

// The dumped processes were SIGKILLed just before a restore on the same
// host and may still be exiting, holding their locks until they are gone.
constexpr auto kLockWait = std::chrono::seconds(3);
constexpr auto kLockRetry = std::chrono::milliseconds(10);

std::vector<std::string_view> Words(std::string_view text) {
  std::vector<std::string_view> words;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
    size_t start = i;
    while (i < text.size() && text[i] != ' ' && text[i] != '\t') ++i;
    if (i > start) words.push_back(text.substr(start, i - start));
  }
  return words;
}

template <typename T>
bool Number(std::string_view s, T* out, int base = 10) {
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out, base);
  return ec == std::errc() && end == s.data() + s.size();
}

// "fe:00:10952903": MAJOR and MINOR of the superblock in hex, inode in decimal.
bool ParseInode(std::string_view s, LockLine* line) {
  if (s == "<none>:0") return true;
  size_t a = s.find(':');
  size_t b = a == std::string_view::npos ? a : s.find(':', a + 1);
  if (b == std::string_view::npos) return false;
  line->has_inode = true;
  return Number(s.substr(0, a), &line->dev_major, 16) &&
         Number(s.substr(a + 1, b - a - 1), &line->dev_minor, 16) &&
         Number(s.substr(b + 1), &line->ino);
}

std::string Describe(const image::FileLock& lock) {
  static constexpr const char* kKinds[] = {"POSIX", "OFD", "flock"};
  std::string range = lock.length() == 0
                          ? fmt::format("{}-EOF", lock.start())
                          : fmt::format("{}-{}", lock.start(), lock.start() + lock.length() - 1);
  std::string text =
      fmt::format("{} {} lock", kKinds[lock.kind() % 3], lock.write() ? "write" : "read");
  if (lock.kind() != image::FileLock::FLOCK) text += " on bytes " + range;
  if (lock.kind() == image::FileLock::POSIX) text += fmt::format(" of pid {}", lock.owner_pid());
  return text;
}

// The pid a host pid has inside the tree's namespace (what Process.pid is).
Result<int> TreePid(pid_t host_pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/status", host_pid)));
  sys::proc::ProcStatus status = STASIS_TRY(sys::proc::ParseStatus(text));
  return status.ns_pid.empty() ? host_pid : status.ns_pid.back();
}

// Whether host process `pid` of the tree has an fd on the description of
// `in` (a flock's locker may have closed it or be outside the tree).
Result<bool> HoldsDescription(const DumpContext& ctx, const FdDumpInput& in, pid_t pid) {
  if (pid == in.pid) return true;
  for (const FdIndexEntry& e : ctx.fd_index) {
    if (e.pid == pid && e.link == in.link &&
        STASIS_TRY(sys::SameFile(in.pid, in.fd, e.pid, e.fd))) {
      return true;
    }
  }
  return false;
}

// Runs `attempt` (which returns 0 or an errno) until the lock is free or
// kLockWait passed.
template <typename Fn>
Status WithRetry(const std::string& what, Fn attempt) {
  auto deadline = std::chrono::steady_clock::now() + kLockWait;
  for (;;) {
    int err = STASIS_TRY(attempt());
    if (err == 0) return Ok();
    if ((err != EAGAIN && err != EACCES) || std::chrono::steady_clock::now() > deadline) {
      if (err == EAGAIN || err == EACCES) {
        return Error(ErrorCode::kFailed,
                     fmt::format("{}: another process holds a conflicting lock (waited {} s)", what,
                                 std::chrono::seconds(kLockWait).count()),
                     err);
      }
      return Error::FromErrno(what, err);
    }
    struct timespec ts = {0, std::chrono::nanoseconds(kLockRetry).count()};
    nanosleep(&ts, nullptr);
  }
}

struct flock ToFlock(const image::FileLock& lock) {
  struct flock fl = {};
  fl.l_type = lock.write() ? F_WRLCK : F_RDLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(lock.start());
  fl.l_len = static_cast<off_t>(lock.length());
  return fl;
}

bool SameRange(const LockLine& a, const LockLine& b) {
  return a.start == b.start && a.to_eof == b.to_eof && (a.to_eof || a.end == b.end) &&
         a.type == b.type && a.pid == b.pid;
}

image::FileLock FromLine(const LockLine& line, image::FileLock::Kind kind) {
  image::FileLock lock;
  lock.set_kind(kind);
  lock.set_write(line.type == "WRITE");
  if (kind != image::FileLock::FLOCK) {
    lock.set_start(line.start);
    lock.set_length(line.to_eof ? 0 : line.end - line.start + 1);
  }
  return lock;
}

// /proc/locks is a seq_file over one global list, handed out about a page
// per read(): when processes outside the (frozen) tree take or drop locks
// between two reads, an entry can be skipped. A reading that equals the one
// before it saw no change.
Result<std::string> ReadLocksConsistently() {
  std::string last = STASIS_TRY(sys::proc::ReadFile("/proc/locks"));
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string now = STASIS_TRY(sys::proc::ReadFile("/proc/locks"));
    if (now == last) return now;
    last = std::move(now);
  }
  return Error(ErrorCode::kFailed, "/proc/locks keeps changing; cannot read a consistent list");
}

}  // namespace

Result<LockLine> ParseLockLine(std::string_view text) {
  auto bad = [&](const char* why) {
    return Error::Invalid(fmt::format("lock line '{}': {}", text, why));
  };
  std::vector<std::string_view> w = Words(text);
  LockLine line;
  size_t i = 0;
  if (w.empty() || w[0].back() != ':' || !Number(w[0].substr(0, w[0].size() - 1), &line.id)) {
    return bad("no 'N:' id");
  }
  ++i;
  if (i < w.size() && w[i] == "->") {
    line.blocked = true;
    ++i;
  }
  // class, then one more word (ADVISORY, ACTIVE, BREAKING, ...), type, pid,
  // inode, start, end.
  if (w.size() - i != 7) return bad("expected 7 fields after the id");
  line.lock_class = w[i];
  line.type = w[i + 2];
  if (!Number(w[i + 3], &line.pid)) return bad("bad pid");
  if (!ParseInode(w[i + 4], &line)) return bad("bad device:inode");
  if (!Number(w[i + 5], &line.start)) return bad("bad start");
  if (w[i + 6] == "EOF") {
    line.to_eof = true;
  } else if (!Number(w[i + 6], &line.end) || line.end < line.start) {
    return bad("bad end");
  }
  return line;
}

Result<std::vector<LockLine>> ParseProcLocks(std::string_view text) {
  std::vector<LockLine> lines;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = text.substr(pos, eol - pos);
    if (!line.empty()) lines.push_back(STASIS_TRY_CTX(ParseLockLine(line), "/proc/locks"));
    pos = eol + 1;
  }
  return lines;
}

Result<std::vector<image::FileLock>> Dump(DumpContext& ctx, const FdDumpInput& in) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  std::vector<image::FileLock> out;
  // This description's own locks: fdinfo shows flock and OFD locks on every
  // fd of the description, and POSIX locks only to their owner.
  std::vector<LockLine> own_posix;
  for (const std::string& text : in.info.locks) {
    LockLine line = STASIS_TRY_CTX(ParseLockLine(text), what);
    if (line.lock_class == "FLOCK") {
      image::FileLock lock = FromLine(line, image::FileLock::FLOCK);
      pid_t pid = static_cast<pid_t>(line.pid);
      if (line.pid > 0 && STASIS_TRY_CTX(HoldsDescription(ctx, in, pid), what)) {
        lock.set_owner_pid(STASIS_TRY_CTX(TreePid(pid), what));
      }
      out.push_back(lock);
    } else if (line.lock_class == "OFDLCK") {
      out.push_back(FromLine(line, image::FileLock::OFD));
    } else if (line.lock_class == "POSIX") {
      own_posix.push_back(line);
      continue;
    } else {
      return Error::Unsupported(
          fmt::format("{}: {} locks are not supported (fdinfo: {})", what, line.lock_class, text));
    }
    if (line.type != "READ" && line.type != "WRITE") {
      return Error::Unsupported(
          fmt::format("{}: a {} lock is not supported ({})", what, line.type, text));
    }
  }

  // POSIX locks of every process of the tree on this inode.
  std::set<pid_t> tree;
  for (const FdIndexEntry& e : ctx.fd_index) tree.insert(e.pid);
  tree.insert(in.pid);
  // /proc/locks, read once per dump: the tree is frozen, so its own lines
  // cannot change meanwhile.
  std::optional<std::string>& proc_locks = ctx.State<DumpState>().proc_locks;
  if (!proc_locks) proc_locks = STASIS_TRY(ReadLocksConsistently());
  const std::string& text = *proc_locks;
  // A line about another file that this parser does not understand must
  // not stop the dump; one that names this inode does.
  std::string inode =
      fmt::format("{:02x}:{:02x}:{} ", major(in.st.st_dev), minor(in.st.st_dev), in.st.st_ino);
  std::map<pid_t, int> tree_pid;
  for (size_t pos = 0, eol; pos < text.size(); pos = eol + 1) {
    eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string_view raw(text.data() + pos, eol - pos);
    if (raw.find(inode) == std::string_view::npos) continue;
    LockLine line = STASIS_TRY_CTX(ParseLockLine(raw), what + ": /proc/locks");
    if (!line.has_inode || line.ino != in.st.st_ino || line.dev_major != major(in.st.st_dev) ||
        line.dev_minor != minor(in.st.st_dev)) {
      continue;
    }
    pid_t pid = static_cast<pid_t>(line.pid);
    if (line.pid <= 0 || !tree.contains(pid)) continue;
    if (line.blocked) {
      return Error::Unsupported(fmt::format(
          "{}: pid {} is waiting for a {} lock on this file and was not stopped by the dump", what,
          pid, line.lock_class));
    }
    if (line.lock_class != "POSIX") continue;  // descriptions' locks come from their fdinfo
    if (line.type != "READ" && line.type != "WRITE") {
      return Error::Unsupported(
          fmt::format("{}: a POSIX {} lock is not supported", what, line.type));
    }
    if (!tree_pid.contains(pid)) tree_pid[pid] = STASIS_TRY_CTX(TreePid(pid), what);
    image::FileLock lock = FromLine(line, image::FileLock::POSIX);
    lock.set_owner_pid(tree_pid[pid]);
    out.push_back(lock);
    std::erase_if(own_posix, [&](const LockLine& o) { return SameRange(o, line); });
  }
  if (!own_posix.empty()) {
    return Error::Unsupported(fmt::format(
        "{}: fdinfo shows a POSIX lock ({} {}-{}) that /proc/locks does not list under device "
        "{}:{} inode {}",
        what, own_posix[0].type, own_posix[0].start,
        own_posix[0].to_eof ? std::string("EOF") : std::to_string(own_posix[0].end),
        major(in.st.st_dev), minor(in.st.st_dev), in.st.st_ino));
  }
  return out;
}

Status TakeOfdLocks(int fd, const google::protobuf::RepeatedPtrField<image::FileLock>& locks,
                    const std::string& what) {
  for (const image::FileLock& lock : locks) {
    if (lock.kind() > image::FileLock::FLOCK) {
      return Error::Corrupt(fmt::format("{}: lock of unknown kind {}", what, lock.kind()));
    }
    if (lock.kind() != image::FileLock::OFD) continue;
    struct flock fl = ToFlock(lock);
    STASIS_TRY(WithRetry(fmt::format("{}: take {}", what, Describe(lock)), [&]() -> Result<int> {
      return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno;
    }));
  }
  return Ok();
}

// flock(fd, op | LOCK_NB) inside the task. The description may have it
// already (taken in an earlier holder): then this changes nothing.
Status TakeFlock(RemoteTask& task, int fd, const image::FileLock& lock) {
  int op = (lock.write() ? LOCK_EX : LOCK_SH) | LOCK_NB;
  return WithRetry(fmt::format("fd {}: take {}", fd, Describe(lock)), [&]() -> Result<int> {
    long r = STASIS_TRY(task.injector().Raw(SYS_flock, fd, op));
    return r == -EWOULDBLOCK ? EAGAIN : r < 0 ? static_cast<int>(-r) : 0;
  });
}

Status TakeProcessLocks(RemoteTask& task, const image::Process& proc, int fd,
                        const google::protobuf::RepeatedPtrField<image::FileLock>& locks) {
  std::vector<const image::FileLock*> mine;
  for (const image::FileLock& lock : locks) {
    if (lock.kind() == image::FileLock::FLOCK &&
        (lock.owner_pid() == 0 || lock.owner_pid() == proc.pid())) {
      STASIS_TRY(TakeFlock(task, fd, lock));
    }
    if (lock.kind() == image::FileLock::POSIX && lock.owner_pid() == proc.pid()) {
      mine.push_back(&lock);
    }
  }
  if (mine.empty()) return Ok();
  // The fds of the file installed so far, by what they can lock: F_RDLCK
  // needs one open for reading, F_WRLCK one open for writing.
  pid_t pid = task.pid();
  struct stat want;
  if (stat(fmt::format("/proc/{}/fd/{}", pid, fd).c_str(), &want) < 0) {
    return Error::Errno(fmt::format("stat /proc/{}/fd/{}", pid, fd));
  }
  int reader = -1, writer = -1;
  for (int n : STASIS_TRY(sys::proc::ListFds(pid))) {
    struct stat st;
    if (stat(fmt::format("/proc/{}/fd/{}", pid, n).c_str(), &st) < 0) continue;
    if (st.st_dev != want.st_dev || st.st_ino != want.st_ino) continue;
    std::string info = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/fdinfo/{}", pid, n)));
    uint32_t flags = STASIS_TRY(sys::proc::ParseFdInfo(info)).flags;
    if (flags & O_PATH) continue;
    if ((flags & O_ACCMODE) != O_WRONLY && reader < 0) reader = n;
    if ((flags & O_ACCMODE) != O_RDONLY && writer < 0) writer = n;
  }
  for (const image::FileLock* lock : mine) {
    // None yet: the fd that can take it is installed later and retakes it.
    int via = lock->write() ? writer : reader;
    if (via < 0) continue;
    struct flock fl = ToFlock(*lock);
    uint64_t addr = STASIS_TRY(task.Put(&fl, sizeof fl));
    std::string desc = fmt::format("fd {}: take {}", via, Describe(*lock));
    STASIS_TRY(WithRetry(desc, [&]() -> Result<int> {
      long r = STASIS_TRY(task.injector().Raw(SYS_fcntl, via, F_SETLK, addr));
      return r < 0 ? static_cast<int>(-r) : 0;
    }));
  }
  return Ok();
}

}  // namespace stasis::kinds::file_locks
