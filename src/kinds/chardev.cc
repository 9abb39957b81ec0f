#include "kinds/chardev.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/sysmacros.h>

#include "fd_kinds.pb.h"

namespace stasis::kinds::chardev {
namespace {

struct Device {
  unsigned major, minor;
  const char* path;
};

// Memory devices of major 1 (drivers/char/mem.c) hold no per-open state.
constexpr Device kDevices[] = {
    {1, 3, "/dev/null"},   {1, 5, "/dev/zero"},    {1, 7, "/dev/full"},
    {1, 8, "/dev/random"}, {1, 9, "/dev/urandom"},
};

const Device* FindDevice(unsigned major, unsigned minor) {
  for (const Device& d : kDevices) {
    if (d.major == major && d.minor == minor) return &d;
  }
  return nullptr;
}

}  // namespace

bool Matches(const FdDumpInput& in) {
  return S_ISCHR(in.st.st_mode) && FindDevice(major(in.st.st_rdev), minor(in.st.st_rdev));
}

Status Dump(DumpContext&, const FdDumpInput& in, image::File* file) {
  const Device* dev = FindDevice(major(in.st.st_rdev), minor(in.st.st_rdev));
  image::CharDeviceState state;
  state.set_major(dev->major);
  state.set_minor(dev->minor);
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  state.set_path(dev->path);
  file->mutable_state()->PackFrom(state);
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext&, const image::File& file) {
  image::CharDeviceState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("chardev state does not parse");
  const Device* dev = FindDevice(state.major(), state.minor());
  if (dev == nullptr) {
    return Error::Invalid(
        fmt::format("chardev {}:{} is not one Stasis restores", state.major(), state.minor()));
  }
  int flags = static_cast<int>(state.flags() & ~(O_CREAT | O_EXCL | O_TRUNC)) | O_CLOEXEC;
  sys::UniqueFd fd(open(dev->path, flags));
  if (!fd.valid()) return Error::Errno(fmt::format("open {} (flags {:#o})", dev->path, flags));
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return Error::Errno(fmt::format("fstat {}", dev->path));
  if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != dev->major || minor(st.st_rdev) != dev->minor) {
    return Error::Invalid(
        fmt::format("{} on this host is not device {}:{}", dev->path, dev->major, dev->minor));
  }
  return fd;
}

const FdKind kKind = {
    .name = kName,
    .summary = "Memory devices: /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
};

}  // namespace stasis::kinds::chardev
