#include "kinds/signalfd.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <charconv>

#include "signalfd.pb.h"

namespace stasis::kinds::signalfd {
namespace {

// F_SETFL changes only these; a signalfd is always O_RDWR.
constexpr uint32_t kSettableFlags = O_APPEND | O_ASYNC | O_NOATIME | O_NONBLOCK;

}  // namespace

bool Matches(const FdDumpInput& in) { return in.link == "anon_inode:[signalfd]"; }

Status Dump(DumpContext&, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  const std::string* text = nullptr;
  for (const auto& [k, v] : in.info.extra) {
    if (k == "sigmask") text = &v;
  }
  if (text == nullptr) return Error::Invalid(what + ": fdinfo has no sigmask line");
  // render_sigset_t: 16 hex digits, signal N at bit N-1.
  uint64_t mask = 0;
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), mask, 16);
  if (ec != std::errc() || end != text->data() + text->size() || text->empty()) {
    return Error::Invalid(fmt::format("{}: fdinfo sigmask '{}' is not a hex number", what, *text));
  }
  image::SignalfdState state;
  state.set_signal_mask(mask);
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  file->mutable_state()->PackFrom(state);
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext&, const image::File& file) {
  image::SignalfdState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("signalfd state does not parse");
  // The raw call: glibc's sigset_t helpers refuse its internal signals
  // (32, 33), which a mask may name all the same.
  uint64_t mask = state.signal_mask();
  sys::UniqueFd fd(static_cast<int>(syscall(SYS_signalfd4, -1, &mask, sizeof mask, SFD_CLOEXEC)));
  if (!fd.valid()) return Error::Errno(fmt::format("signalfd4(mask {:#x})", mask));
  if (fcntl(fd.get(), F_SETFL, state.flags() & kSettableFlags) < 0) {
    return Error::Errno(fmt::format("signalfd: F_SETFL {:#o}", state.flags()));
  }
  return fd;
}

const FdKind kKind = {
    .name = kName,
    .summary = "signalfd: signal mask and status flags",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
};

}  // namespace stasis::kinds::signalfd
