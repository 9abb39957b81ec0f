#include "sys/timens.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <thread>
#include <utility>

#include "sys/proc.h"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

namespace stasis::sys {
namespace {

std::string ProcPath(pid_t pid, std::string_view rest) {
  return pid == 0 ? fmt::format("/proc/self/{}", rest) : fmt::format("/proc/{}/{}", pid, rest);
}

Result<int64_t> ParseInt(std::string_view s, std::string_view what) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) {
    return Error::Invalid(fmt::format("timens_offsets: bad {} '{}'", what, s));
  }
  return v;
}

// The inode of a /proc/PID/ns link, 0 when the kernel has no time
// namespaces (then /proc/self/ns/time is missing too).
Result<uint64_t> NsInode(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0) return static_cast<uint64_t>(st.st_ino);
  int err = errno;
  if (err == ENOENT && stat("/proc/self/ns/time", &st) < 0 && errno == ENOENT) return 0;
  if (err == ENOENT || err == ESRCH) {
    return Error(ErrorCode::kNotFound, "stat " + path + " (no such process, or a zombie)", err);
  }
  return Error::FromErrno("stat " + path, err);
}

int64_t Now(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return ts.tv_sec * kNsPerSec + ts.tv_nsec;
}

Status WriteOffsets(pid_t pid, const TimeOffsets& offsets) {
  std::string path = ProcPath(pid, "timens_offsets");
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) return Error::Errno("open " + path);
  // One write: the kernel checks and applies every line of it together.
  std::string text = FormatTimeOffsets(offsets);
  ssize_t n = write(fd.get(), text.data(), text.size());
  if (n < 0) {
    return Error::Errno(fmt::format("write '{}' to {}", text.substr(0, text.size() - 1), path));
  }
  if (static_cast<size_t>(n) != text.size()) return Error::Invalid("short write to " + path);
  return Ok();
}

}  // namespace

Result<TimeOffsets> ParseTimeOffsets(std::string_view text) {
  TimeOffsets out;
  while (!text.empty()) {
    size_t eol = std::min(text.find('\n'), text.size());
    std::string_view line = text.substr(0, eol);
    text.remove_prefix(std::min(eol + 1, text.size()));
    std::string_view fields[3];
    size_t n = 0;
    for (size_t pos = 0; pos < line.size();) {
      size_t begin = line.find_first_not_of(" \t", pos);
      if (begin == std::string_view::npos) break;
      size_t end = std::min(line.find_first_of(" \t", begin), line.size());
      if (n == 3) return Error::Invalid(fmt::format("timens_offsets: bad line '{}'", line));
      fields[n++] = line.substr(begin, end - begin);
      pos = end;
    }
    if (n == 0) continue;
    if (n != 3) return Error::Invalid(fmt::format("timens_offsets: bad line '{}'", line));
    int64_t sec = STASIS_TRY(ParseInt(fields[1], "seconds"));
    int64_t nsec = STASIS_TRY(ParseInt(fields[2], "nanoseconds"));
    if (nsec < 0 || nsec >= kNsPerSec || sec > INT64_MAX / kNsPerSec - 1 ||
        sec < INT64_MIN / kNsPerSec + 1) {
      return Error::Invalid(fmt::format("timens_offsets: offset out of range in '{}'", line));
    }
    int64_t ns = sec * kNsPerSec + nsec;
    if (fields[0] == "monotonic" || fields[0] == "1") {
      out.monotonic_ns = ns;
    } else if (fields[0] == "boottime" || fields[0] == "7") {
      out.boottime_ns = ns;
    } else {
      return Error::Invalid(fmt::format("timens_offsets: unknown clock '{}'", fields[0]));
    }
  }
  return out;
}

std::string FormatTimeOffsets(const TimeOffsets& offsets) {
  auto line = [](const char* clock, int64_t ns) {
    int64_t sec = ns / kNsPerSec, nsec = ns % kNsPerSec;
    if (nsec < 0) {
      sec -= 1;
      nsec += kNsPerSec;
    }
    return fmt::format("{} {} {}\n", clock, sec, nsec);
  };
  return line("monotonic", offsets.monotonic_ns) + line("boottime", offsets.boottime_ns);
}

Result<uint64_t> TimeNamespaceId(pid_t pid) { return NsInode(ProcPath(pid, "ns/time")); }

Result<TimeOffsets> ReadTimeOffsets(pid_t pid) {
  uint64_t own = STASIS_TRY(TimeNamespaceId(pid));
  if (own == 0) return TimeOffsets{};
  uint64_t children = STASIS_TRY(NsInode(ProcPath(pid, "ns/time_for_children")));
  if (children != own) {
    return Error::Unsupported(
        fmt::format("{} has unshared a time namespace for its children that it is not in",
                    pid == 0 ? std::string("this process") : fmt::format("pid {}", pid)));
  }
  std::string path = ProcPath(pid, "timens_offsets");
  std::string text = STASIS_TRY(proc::ReadFile(path));
  return STASIS_TRY_CTX(ParseTimeOffsets(text), path);
}

ClockReading ReadClocks() {
  ClockReading r;
  r.monotonic_ns = Now(CLOCK_MONOTONIC);
  r.boottime_ns = Now(CLOCK_BOOTTIME);
  r.realtime_ns = Now(CLOCK_REALTIME);
  return r;
}

Result<ClockReading> ReadHostClocks() {
  TimeOffsets own = STASIS_TRY(ReadTimeOffsets(0));
  ClockReading r = ReadClocks();
  r.monotonic_ns -= own.monotonic_ns;
  r.boottime_ns -= own.boottime_ns;
  return r;
}

ClockReading Shifted(const ClockReading& host, const TimeOffsets& offsets) {
  return {host.monotonic_ns + offsets.monotonic_ns, host.boottime_ns + offsets.boottime_ns,
          host.realtime_ns};
}

Result<TimeOffsets> ContinuationOffsets(const ClockReading& recorded,
                                        const ClockReading& host_now) {
  // 128 bits: a forged image must get an error, not an overflow.
  __int128 elapsed =
      std::max<__int128>(0, static_cast<__int128>(host_now.realtime_ns) - recorded.realtime_ns);
  constexpr __int128 kLimit = static_cast<__int128>(kMaxNamespaceClockSec - 60) * kNsPerSec;
  auto offset = [&](const char* clock, int64_t was, int64_t host) -> Result<int64_t> {
    if (was < 0) {
      return Error::Corrupt(fmt::format("the image's {} is negative ({} ns)", clock, was));
    }
    __int128 target = static_cast<__int128>(was) + elapsed;
    if (target > kLimit) {
      return Error::Unsupported(fmt::format(
          "the tree's {} would be {} s ({} s at the dump + {} s since), beyond what a time "
          "namespace can show ({} s)",
          clock, static_cast<int64_t>(target / kNsPerSec), was / kNsPerSec,
          static_cast<int64_t>(elapsed / kNsPerSec), kMaxNamespaceClockSec));
    }
    return static_cast<int64_t>(target - host);
  };
  TimeOffsets out;
  out.monotonic_ns =
      STASIS_TRY(offset("CLOCK_MONOTONIC", recorded.monotonic_ns, host_now.monotonic_ns));
  out.boottime_ns =
      STASIS_TRY(offset("CLOCK_BOOTTIME", recorded.boottime_ns, host_now.boottime_ns));
  return out;
}

Result<UniqueFd> CreateTimeNamespace(const TimeOffsets& offsets) {
  // In a thread of its own: unshare(CLONE_NEWTIME) changes only the calling
  // thread's namespace for children, and a thread costs nothing like a
  // fork of a restorer holding gigabytes of pages. /proc/TID (not listed,
  // but there) is that thread's, timens_offsets included.
  Result<UniqueFd> out = Error::Invalid("the time namespace thread did not run");
  std::thread maker([&out, &offsets] {
    if (unshare(CLONE_NEWTIME) < 0) {
      out = Error::Errno("unshare(CLONE_NEWTIME)");
      return;
    }
    pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
    Status written = WriteOffsets(tid, offsets);
    if (!written.ok()) {
      out = std::move(written).error().Context("set the time namespace's offsets");
      return;
    }
    UniqueFd fd(open("/proc/thread-self/ns/time_for_children", O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
      out = Error::Errno("open /proc/thread-self/ns/time_for_children");
      return;
    }
    out = std::move(fd);
  });
  maker.join();
  return out;
}

int EnterTimeNamespace(int fd) { return syscall(SYS_setns, fd, CLONE_NEWTIME) == 0 ? 0 : errno; }

}  // namespace stasis::sys
