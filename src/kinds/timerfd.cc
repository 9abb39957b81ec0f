#include "kinds/timerfd.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/ioctl.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <charconv>

#include "sys/proc.h"
#include "timerfd.pb.h"

namespace stasis::kinds::timerfd {
namespace {

// F_SETFL changes only these; a timerfd is always O_RDWR.
constexpr uint32_t kSettableFlags = O_APPEND | O_ASYNC | O_NOATIME | O_NONBLOCK;
// include/uapi/linux/timerfd.h; Debian's libc headers do not have it.
constexpr unsigned long kTfdIocSetTicks = _IOW('T', 0, uint64_t);
constexpr uint32_t kSettimeFlags = TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET;

const std::string* Find(const sys::proc::FdInfo& info, std::string_view key) {
  for (const auto& [k, v] : info.extra) {
    if (k == key) return &v;
  }
  return nullptr;
}

template <typename T>
Result<T> Number(const sys::proc::FdInfo& info, std::string_view key, int base,
                 const std::string& what) {
  const std::string* text = Find(info, key);
  if (text == nullptr) return Error::Invalid(fmt::format("{}: fdinfo has no {} line", what, key));
  T value{};
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), value, base);
  if (ec != std::errc() || end != text->data() + text->size() || text->empty()) {
    return Error::Invalid(fmt::format("{}: fdinfo {} '{}' is not a number", what, key, *text));
  }
  return value;
}

Result<std::string> BootId() {
  std::string id = STASIS_TRY(sys::proc::ReadFile("/proc/sys/kernel/random/boot_id"));
  while (!id.empty() && id.back() == '\n') id.pop_back();
  return id;
}

bool BootBound(int clockid) {
  return clockid == CLOCK_MONOTONIC || clockid == CLOCK_BOOTTIME || clockid == CLOCK_BOOTTIME_ALARM;
}

// The fdinfo "ticks" of a timerfd of ours.
Result<uint64_t> Ticks(int fd, const std::string& what) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/self/fdinfo/{}", fd)));
  sys::proc::FdInfo info = STASIS_TRY_CTX(sys::proc::ParseFdInfo(text), what);
  return Number<uint64_t>(info, "ticks", 10, what);
}

struct timespec Add(struct timespec a, int64_t sec, int64_t nsec) {
  a.tv_sec += sec;
  a.tv_nsec += nsec;
  if (a.tv_nsec >= 1000000000) {
    a.tv_sec += 1;
    a.tv_nsec -= 1000000000;
  }
  return a;
}

}  // namespace

bool Matches(const FdDumpInput& in) { return in.link == "anon_inode:[timerfd]"; }

Status Dump(DumpContext&, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  struct itimerspec its;
  if (timerfd_gettime(in.local.get(), &its) < 0) return Error::Errno(what + ": timerfd_gettime");
  image::TimerfdState state;
  state.set_clockid(STASIS_TRY(Number<int32_t>(in.info, "clockid", 10, what)));
  struct timespec now;
  if (clock_gettime(state.clockid(), &now) < 0) {
    return Error::Errno(fmt::format("{}: clock_gettime({})", what, state.clockid()));
  }
  // fdinfo again: gettime just counted the periods a periodic timer missed.
  std::string text =
      STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/self/fdinfo/{}", in.local.get())));
  sys::proc::FdInfo info = STASIS_TRY_CTX(sys::proc::ParseFdInfo(text), what);
  state.set_ticks(STASIS_TRY(Number<uint64_t>(info, "ticks", 10, what)));
  state.set_settime_flags(STASIS_TRY(Number<uint32_t>(info, "settime flags", 8, what)));
  if (state.settime_flags() & ~kSettimeFlags) {
    return Error::Unsupported(
        fmt::format("{}: unknown settime flags {:#o}", what, state.settime_flags()));
  }
  state.set_value_sec(its.it_value.tv_sec);
  state.set_value_nsec(its.it_value.tv_nsec);
  state.set_interval_sec(its.it_interval.tv_sec);
  state.set_interval_nsec(its.it_interval.tv_nsec);
  state.set_now_sec(now.tv_sec);
  state.set_now_nsec(now.tv_nsec);
  state.set_boot_id(STASIS_TRY(BootId()));
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  file->mutable_state()->PackFrom(state);
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext&, const image::File& file) {
  image::TimerfdState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("timerfd state does not parse");
  std::string what = fmt::format("timerfd (clock {})", state.clockid());
  sys::UniqueFd fd(timerfd_create(state.clockid(), TFD_CLOEXEC));
  if (!fd.valid()) return Error::Errno(what + ": timerfd_create");
  struct itimerspec its = {};
  its.it_interval = {state.interval_sec(), state.interval_nsec()};
  its.it_value = {state.value_sec(), state.value_nsec()};
  int flags = static_cast<int>(state.settime_flags());
  bool armed = its.it_value.tv_sec != 0 || its.it_value.tv_nsec != 0;
  if (armed && (flags & TFD_TIMER_ABSTIME)) {
    bool same_boot = STASIS_TRY(BootId()) == state.boot_id();
    if (same_boot || !BootBound(state.clockid())) {
      its.it_value =
          Add({state.now_sec(), state.now_nsec()}, state.value_sec(), state.value_nsec());
    } else {
      flags &= ~(TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET);  // the time it had left
    }
  }
  if (timerfd_settime(fd.get(), flags, &its, nullptr) < 0) {
    return Error::Errno(
        fmt::format("{}: timerfd_settime(flags {:#o}, value {}.{:09}, interval {}.{:09})", what,
                    flags, its.it_value.tv_sec, its.it_value.tv_nsec, its.it_interval.tv_sec,
                    its.it_interval.tv_nsec));
  }
  if (state.ticks() != 0) {
    // A deadline that passed while the tree was in the image fired already.
    uint64_t ticks = state.ticks() + STASIS_TRY(Ticks(fd.get(), what));
    if (ioctl(fd.get(), kTfdIocSetTicks, &ticks) < 0) {
      return Error::Errno(fmt::format(
          "{}: TFD_IOC_SET_TICKS {} (needs a kernel with CONFIG_CHECKPOINT_RESTORE)", what, ticks));
    }
  }
  if (fcntl(fd.get(), F_SETFL, state.flags() & kSettableFlags) < 0) {
    return Error::Errno(fmt::format("{}: F_SETFL {:#o}", what, state.flags()));
  }
  return fd;
}

const FdKind kKind = {
    .name = kName,
    .summary = "timerfd: clock, time left, interval and unread ticks",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
};

}  // namespace stasis::kinds::timerfd
