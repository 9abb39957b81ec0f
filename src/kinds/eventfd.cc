#include "kinds/eventfd.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <charconv>
#include <climits>
#include <optional>

#include "eventfd.pb.h"

namespace stasis::kinds::eventfd {
namespace {

// F_SETFL changes only these; an eventfd is always O_RDWR.
constexpr uint32_t kSettableFlags = O_APPEND | O_ASYNC | O_NOATIME | O_NONBLOCK;
// The kernel refuses to add to the counter past this (fs/eventfd.c): it is
// the largest count a write can produce.
constexpr uint64_t kMaxWritableCount = ULLONG_MAX - 1;

const std::string* FindExtra(const FdDumpInput& in, std::string_view key) {
  for (const auto& [k, v] : in.info.extra) {
    if (k == key) return &v;
  }
  return nullptr;
}

// fdinfo prints numbers space-padded ("eventfd-count:       5"); the parser
// already trimmed them, so the whole value must be the number.
std::optional<uint64_t> ParseNumber(const std::string& text, int base) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, base);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

Result<uint64_t> ExtraNumber(const FdDumpInput& in, std::string_view key, int base) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  const std::string* text = FindExtra(in, key);
  if (text == nullptr) return Error::Invalid(fmt::format("{}: fdinfo has no {} line", what, key));
  std::optional<uint64_t> value = ParseNumber(*text, base);
  if (!value)
    return Error::Invalid(fmt::format("{}: fdinfo {} '{}' is not a number", what, key, *text));
  return *value;
}

// A count above what eventfd2() takes is built by a write, which adds.
Status SetCounter(int fd, uint64_t counter) {
  if (counter <= UINT_MAX) return Ok();
  ssize_t n = write(fd, &counter, sizeof counter);
  if (n != static_cast<ssize_t>(sizeof counter)) {
    return Error::Errno(fmt::format("eventfd: write counter {:#x}", counter));
  }
  return Ok();
}

}  // namespace

bool Matches(const FdDumpInput& in) { return in.link == "anon_inode:[eventfd]"; }

Status Dump(DumpContext&, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  if (FindExtra(in, "eventfd-semaphore") == nullptr) {
    // Nothing else shows EFD_SEMAPHORE without consuming the counter.
    return Error::Unsupported(
        what + ": this kernel's fdinfo does not show eventfd-semaphore (Linux 6.5+)");
  }
  uint64_t counter = STASIS_TRY(ExtraNumber(in, "eventfd-count", 16));
  uint64_t semaphore = STASIS_TRY(ExtraNumber(in, "eventfd-semaphore", 10));
  if (semaphore > 1) {
    return Error::Invalid(fmt::format("{}: fdinfo eventfd-semaphore is {}", what, semaphore));
  }
  if (counter > kMaxWritableCount) {
    return Error::Unsupported(
        fmt::format("{}: counter {:#x} is past what a write can recreate (an in-kernel signaller "
                    "overflowed it)",
                    what, counter));
  }
  image::EventfdState state;
  state.set_counter(counter);
  state.set_semaphore(semaphore == 1);
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  if (FindExtra(in, "eventfd-id") != nullptr) {
    state.set_id(static_cast<uint32_t>(STASIS_TRY(ExtraNumber(in, "eventfd-id", 10))));
  }
  file->mutable_state()->PackFrom(state);
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext&, const image::File& file) {
  image::EventfdState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("eventfd state does not parse");
  if (state.counter() > kMaxWritableCount) {
    return Error::Corrupt(fmt::format("eventfd counter {:#x} is out of range", state.counter()));
  }
  unsigned int initval =
      state.counter() <= UINT_MAX ? static_cast<unsigned int>(state.counter()) : 0;
  int flags = EFD_CLOEXEC | (state.semaphore() ? EFD_SEMAPHORE : 0);
  sys::UniqueFd fd(::eventfd(initval, flags));
  if (!fd.valid()) return Error::Errno(fmt::format("eventfd({}, {:#x})", initval, flags));
  STASIS_TRY(SetCounter(fd.get(), state.counter()));
  if (fcntl(fd.get(), F_SETFL, state.flags() & kSettableFlags) < 0) {
    return Error::Errno(fmt::format("eventfd: F_SETFL {:#o}", state.flags()));
  }
  return fd;
}

const FdKind kKind = {
    .name = kName,
    .summary = "eventfd: counter, semaphore mode and flags",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
};

}  // namespace stasis::kinds::eventfd
