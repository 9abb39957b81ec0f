#include "kinds/regular_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include "fd_kinds.pb.h"

namespace stasis::kinds::regular_file {
namespace {

constexpr std::string_view kDeletedSuffix = " (deleted)";

// Flags that only matter at open time and must not be replayed.
constexpr uint32_t kOpenOnlyFlags = O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY;

}  // namespace

bool Matches(const FdDumpInput& in) { return S_ISREG(in.st.st_mode) || S_ISDIR(in.st.st_mode); }

Status Dump(DumpContext&, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  if (in.st.st_nlink == 0 || in.link.ends_with(kDeletedSuffix)) {
    return Error::Unsupported(what + ": deleted files are not supported yet");
  }
  if (in.link.empty() || in.link[0] != '/') {
    return Error::Unsupported(what + ": file is not reachable by path");
  }
  if (!in.info.locks.empty()) {
    return Error::Unsupported(what + ": file locks are not supported yet (" + in.info.locks[0] +
                              ")");
  }
  image::RegularFileState state;
  state.set_path(in.link);
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  state.set_pos(in.info.pos);
  state.set_size(in.st.st_size);
  state.set_mode(in.st.st_mode);
  file->mutable_state()->PackFrom(state);
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext&, const image::File& file) {
  image::RegularFileState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("regular file state does not parse");
  std::string what = "file " + state.path();
  int flags = static_cast<int>(state.flags() & ~kOpenOnlyFlags) | O_CLOEXEC;
  sys::UniqueFd fd(open(state.path().c_str(), flags));
  if (!fd.valid()) return Error::Errno(fmt::format("open {} (flags {:#o})", what, flags));
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return Error::Errno("fstat " + what);
  if ((st.st_mode & S_IFMT) != (state.mode() & S_IFMT)) {
    return Error::Invalid(what + ": is no longer the same type of file as at dump time");
  }
  if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) != state.size()) {
    return Error::Invalid(fmt::format("{} changed size since the dump (was {} bytes, now {})", what,
                                      state.size(), st.st_size));
  }
  if (!(state.flags() & O_PATH) && lseek(fd.get(), static_cast<off_t>(state.pos()), SEEK_SET) < 0) {
    return Error::Errno(fmt::format("lseek {} to {}", what, state.pos()));
  }
  return fd;
}

}  // namespace stasis::kinds::regular_file
