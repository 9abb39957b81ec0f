#include "sys/cgroup.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <thread>
#include <utility>

#include "sys/proc.h"
#include "sys/unique_fd.h"

namespace stasis::sys {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

constexpr milliseconds kPollStep(10);

// mountinfo escapes blanks, tabs, newlines and backslashes as \ooo.
std::string UnescapeMountinfo(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int value = 0;
      auto [end, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 4, value, 8);
      if (ec == std::errc() && end == s.data() + i + 4) {
        out.push_back(static_cast<char>(value));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

constexpr std::string_view kBlanks = " \t\n";

std::vector<std::string_view> SplitBlanks(std::string_view line) {
  std::vector<std::string_view> fields;
  size_t pos = 0;
  while (pos < line.size()) {
    size_t begin = line.find_first_not_of(kBlanks, pos);
    if (begin == std::string_view::npos) break;
    size_t end = line.find_first_of(kBlanks, begin);
    if (end == std::string_view::npos) end = line.size();
    fields.push_back(line.substr(begin, end - begin));
    pos = end;
  }
  return fields;
}

// The mount point of a cgroup2 line of mountinfo, or "" for other lines.
// Fields: id parent dev root mountpoint opts [optional...] - fstype src super.
std::string Cgroup2MountPoint(std::string_view line) {
  std::vector<std::string_view> f = SplitBlanks(line);
  if (f.size() < 9) return "";
  // The separator comes after the six fixed fields (a mount point may be "-").
  auto dash = std::find(f.begin() + 6, f.end(), "-");
  if (dash == f.end() || dash + 1 == f.end()) return "";
  if (*(dash + 1) != "cgroup2") return "";
  return UnescapeMountinfo(f[4]);
}

Status WriteFile(const std::string& path, std::string_view text) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) return Error::Errno("open " + path);
  ssize_t n = write(fd.get(), text.data(), text.size());
  if (n < 0) return Error::Errno(fmt::format("write '{}' to {}", text, path));
  if (static_cast<size_t>(n) != text.size()) {
    return Error(ErrorCode::kFailed, fmt::format("short write of '{}' to {}", text, path));
  }
  return Ok();
}

// The value of `key` in a "key value" per line file (cgroup.events).
Result<int64_t> KeyedValue(std::string_view text, std::string_view key, const std::string& path) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::vector<std::string_view> f = SplitBlanks(text.substr(pos, end - pos));
    int64_t value = 0;
    if (f.size() == 2 && f[0] == key &&
        std::from_chars(f[1].data(), f[1].data() + f[1].size(), value).ec == std::errc()) {
      return value;
    }
    pos = end + 1;
  }
  return Error::Invalid(fmt::format("{}: no '{}' line", path, key));
}

Result<int64_t> ReadKeyed(const std::string& path, std::string_view key) {
  std::string text = STASIS_TRY(proc::ReadFile(path));
  return KeyedValue(text, key, path);
}

bool HasWord(std::string_view text, std::string_view word) {
  for (std::string_view w : SplitBlanks(text)) {
    if (w == word) return true;
  }
  return false;
}

// Lets the children of `dir` have memory.current, when `dir` offers the
// memory controller. Best effort: it fails when `dir` holds processes itself
// (the no-internal-process rule) or memory lives in a v1 hierarchy.
void EnableMemoryForChildren(const std::string& dir) {
  Result<std::string> offered = proc::ReadFile(dir + "/cgroup.controllers");
  Result<std::string> enabled = proc::ReadFile(dir + "/cgroup.subtree_control");
  if (!offered.ok() || !enabled.ok() || !HasWord(*offered, "memory")) return;
  if (HasWord(*enabled, "memory")) return;
  (void)WriteFile(dir + "/cgroup.subtree_control", "+memory");
}

Status ValidateRelative(std::string_view relative) {
  if (relative.empty() || relative.front() == '/' || relative.back() == '/') {
    return Error::Invalid(fmt::format("bad cgroup name '{}'", relative));
  }
  size_t pos = 0;
  while (pos <= relative.size()) {
    size_t end = std::min(relative.find('/', pos), relative.size());
    std::string_view part = relative.substr(pos, end - pos);
    if (part.empty() || part == "." || part == "..") {
      return Error::Invalid(fmt::format("bad cgroup name '{}'", relative));
    }
    pos = end + 1;
  }
  return Ok();
}

// Waits until cgroup.events says "frozen <want>". The kernel signals a
// change of that file with POLLPRI; the poll is also capped at 50 ms so a
// missed notification only costs a re-read.
Status WaitFrozen(const std::string& dir, bool want, milliseconds timeout) {
  std::string events = dir + "/cgroup.events";
  UniqueFd fd(open(events.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Error::Errno("open " + events);
  Clock::time_point deadline = Clock::now() + timeout;
  for (;;) {
    char buf[512];
    ssize_t n = pread(fd.get(), buf, sizeof(buf) - 1, 0);
    if (n < 0) return Error::Errno("read " + events);
    int64_t frozen = STASIS_TRY(KeyedValue(std::string_view(buf, n), "frozen", events));
    if ((frozen != 0) == want) return Ok();
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      return Error(ErrorCode::kFailed,
                   fmt::format("cgroup {} did not {} within {} ms (a task in uninterruptible "
                               "sleep, or one frozen by the v1 freezer, delays the v2 freezer)",
                               dir, want ? "freeze" : "thaw", timeout.count()));
    }
    struct pollfd p = {fd.get(), POLLPRI, 0};
    poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 50)));
  }
}

}  // namespace

Result<std::string> ParseCgroup2Mount(std::string_view mountinfo) {
  std::vector<std::string> found;
  size_t pos = 0;
  while (pos < mountinfo.size()) {
    size_t end = mountinfo.find('\n', pos);
    if (end == std::string_view::npos) end = mountinfo.size();
    std::string point = Cgroup2MountPoint(mountinfo.substr(pos, end - pos));
    if (!point.empty()) found.push_back(std::move(point));
    pos = end + 1;
  }
  for (const char* preferred : {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}) {
    if (std::find(found.begin(), found.end(), preferred) != found.end()) {
      return std::string(preferred);
    }
  }
  if (!found.empty()) return found.front();
  return Error::NotFound("no cgroup2 file system is mounted");
}

Result<std::string> FindCgroup2Mount() {
  std::string text = STASIS_TRY(proc::ReadFile("/proc/self/mountinfo"));
  return ParseCgroup2Mount(text);
}

Result<Cgroup> Cgroup::Create(std::string_view relative) {
  STASIS_TRY(ValidateRelative(relative));
  std::string path = STASIS_TRY(FindCgroup2Mount());
  size_t pos = 0;
  while (pos < relative.size()) {
    size_t end = std::min(relative.find('/', pos), relative.size());
    path += "/";
    path += relative.substr(pos, end - pos);
    if (mkdir(path.c_str(), 0755) < 0 && errno != EEXIST) return Error::Errno("mkdir " + path);
    if (end < relative.size()) EnableMemoryForChildren(path);
    pos = end + 1;
  }
  return Cgroup(std::move(path));
}

Result<Cgroup> Cgroup::Open(std::string path) {
  if (access((path + "/cgroup.procs").c_str(), F_OK) < 0) {
    if (errno == ENOENT) return Error::NotFound("no cgroup at " + path);
    return Error::Errno("access " + path);
  }
  return Cgroup(std::move(path));
}

Status Cgroup::AddProcess(pid_t pid) const {
  Status moved = WriteFile(path_ + "/cgroup.procs", std::to_string(pid));
  if (!moved.ok()) return std::move(moved).error().Context(fmt::format("move pid {}", pid));
  return Ok();
}

Result<std::vector<pid_t>> Cgroup::Processes() const {
  std::string text = STASIS_TRY(proc::ReadFile(path_ + "/cgroup.procs"));
  std::vector<pid_t> pids;
  for (std::string_view word : SplitBlanks(text)) {
    pid_t pid = 0;
    if (std::from_chars(word.data(), word.data() + word.size(), pid).ec != std::errc()) {
      return Error::Invalid(fmt::format("{}/cgroup.procs: not a pid: '{}'", path_, word));
    }
    pids.push_back(pid);
  }
  std::sort(pids.begin(), pids.end());
  pids.erase(std::unique(pids.begin(), pids.end()), pids.end());
  return pids;
}

Result<std::optional<uint64_t>> Cgroup::MemoryCurrent() const {
  std::string path = path_ + "/memory.current";
  Result<std::string> text = proc::ReadFile(path);
  if (!text.ok()) {
    if (text.error().code() == ErrorCode::kNotFound) return std::optional<uint64_t>();
    return std::move(text).error();
  }
  uint64_t bytes = 0;
  std::string_view s = *text;
  while (!s.empty() && kBlanks.find(s.back()) != std::string_view::npos) s.remove_suffix(1);
  if (std::from_chars(s.data(), s.data() + s.size(), bytes).ec != std::errc()) {
    return Error::Invalid(fmt::format("{}: not a number: '{}'", path, s));
  }
  return std::optional<uint64_t>(bytes);
}

Result<bool> Cgroup::Populated() const {
  int64_t populated = STASIS_TRY(ReadKeyed(path_ + "/cgroup.events", "populated"));
  return populated != 0;
}

Status Cgroup::KillAll(milliseconds timeout) const {
  Status killed = WriteFile(path_ + "/cgroup.kill", "1");
  if (!killed.ok()) {
    // Before 5.14: kill what is listed; forks racing with us are caught by
    // the next round of the loop below.
    for (pid_t pid : STASIS_TRY(Processes())) kill(pid, SIGKILL);
  }
  Clock::time_point deadline = Clock::now() + timeout;
  while (STASIS_TRY(Populated())) {
    if (Clock::now() >= deadline) {
      return Error(
          ErrorCode::kFailed,
          fmt::format("cgroup {} still has processes {} ms after SIGKILL", path_, timeout.count()));
    }
    if (!killed.ok()) {
      for (pid_t pid : STASIS_TRY(Processes())) kill(pid, SIGKILL);
    }
    std::this_thread::sleep_for(kPollStep);
  }
  return Ok();
}

Status Cgroup::Remove(milliseconds timeout) const {
  Clock::time_point deadline = Clock::now() + timeout;
  for (;;) {
    if (rmdir(path_.c_str()) == 0 || errno == ENOENT) return Ok();
    if (errno != EBUSY || Clock::now() >= deadline) {
      return Error::Errno("remove cgroup " + path_);
    }
    std::this_thread::sleep_for(kPollStep);
  }
}

Result<FrozenCgroup> FrozenCgroup::Freeze(const Cgroup& cgroup, milliseconds timeout) {
  const std::string& dir = cgroup.path();
  Result<std::string> before = proc::ReadFile(dir + "/cgroup.freeze");
  if (!before.ok()) {
    if (before.error().code() == ErrorCode::kNotFound) {
      return Error::Unsupported(
          fmt::format("{} has no cgroup.freeze (the root cgroup, or a kernel before 5.2)", dir));
    }
    return std::move(before).error();
  }
  FrozenCgroup frozen(dir, before->starts_with("1"));
  STASIS_TRY_CTX(WriteFile(dir + "/cgroup.freeze", "1"), "freeze");
  // On timeout `frozen` goes out of scope here and thaws the cgroup.
  STASIS_TRY(WaitFrozen(dir, true, timeout));
  return frozen;
}

FrozenCgroup::FrozenCgroup(FrozenCgroup&& other) noexcept
    : path_(std::exchange(other.path_, "")), was_frozen_(other.was_frozen_) {}

FrozenCgroup::~FrozenCgroup() { (void)Thaw(); }

Status FrozenCgroup::Thaw() {
  if (path_.empty()) return Ok();
  std::string dir = std::exchange(path_, "");
  return WriteFile(dir + "/cgroup.freeze", was_frozen_ ? "1" : "0");
}

}  // namespace stasis::sys
