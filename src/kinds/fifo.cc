#include "kinds/fifo.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <climits>
#include <set>
#include <string>

#include "fifo.pb.h"
#include "kinds/pipe.h"

namespace stasis::kinds::fifo {
namespace {

// FIFOs whose unread data is already in the image: Key followed by the id
// of the File that carries it.
struct DumpState {
  std::set<std::string> with_data;
};

// F_SETFL changes only these; the access mode comes from the open.
constexpr uint32_t kSettableFlags = O_APPEND | O_ASYNC | O_DIRECT | O_NOATIME | O_NONBLOCK;
constexpr std::string_view kDeletedSuffix = " (deleted)";

std::string Key(const struct stat& st) { return fmt::format("fifo:{}:{}:", st.st_dev, st.st_ino); }

// Opens the FIFO by path for the first File of it: holds it open read-write
// (in ctx.keep_alive) so that further opens never wait for a peer and the
// buffer lives while it is refilled.
Result<int> OpenFirst(RestoreContext& ctx, const image::FifoState& state, const std::string& what) {
  sys::UniqueFd keep(open(state.path().c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!keep.valid()) return Error::Errno(what + ": open");
  struct stat st;
  if (fstat(keep.get(), &st) < 0) return Error::Errno(what + ": fstat");
  if (!S_ISFIFO(st.st_mode)) return Error::Invalid(what + ": is no longer a FIFO");
  int queued = 0;
  if (ioctl(keep.get(), FIONREAD, &queued) < 0) return Error::Errno(what + ": FIONREAD");
  if (queued > 0) {
    return Error::Invalid(fmt::format(
        "{}: already holds {} unread bytes: a process outside the tree has it open, and "
        "restoring the image's data would double them",
        what, queued));
  }
  int size = fcntl(keep.get(), F_GETPIPE_SZ);
  if (size < 0) return Error::Errno(what + ": F_GETPIPE_SZ");
  if (static_cast<uint32_t>(size) != state.pipe_size() &&
      fcntl(keep.get(), F_SETPIPE_SZ, state.pipe_size()) < 0) {
    return Error::Errno(fmt::format("{}: F_SETPIPE_SZ {}", what, state.pipe_size()));
  }
  const std::string& data = state.data();
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(keep.get(), data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Error::Errno(fmt::format("{}: refill {} bytes", what, data.size()));
    done += static_cast<size_t>(n);
  }
  ctx.keep_alive.push_back(std::move(keep));
  return ctx.keep_alive.back().get();
}

}  // namespace

bool Matches(const FdDumpInput& in) {
  return S_ISFIFO(in.st.st_mode) && in.link.starts_with("/") && !(in.info.flags & O_PATH);
}

Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  if (in.st.st_nlink == 0 || in.link.ends_with(kDeletedSuffix)) {
    return Error::Unsupported(what + ": an unlinked FIFO is not supported");
  }
  if (!in.info.locks.empty()) {
    return Error::Unsupported(what + ": locks on a FIFO are not supported (" + in.info.locks[0] +
                              ")");
  }
  int size = fcntl(in.local.get(), F_GETPIPE_SZ);
  if (size < 0) return Error::Errno(what + ": F_GETPIPE_SZ");
  image::FifoState state;
  state.set_path(in.link);
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  state.set_pipe_size(static_cast<uint32_t>(size));
  state.set_dev(in.st.st_dev);
  state.set_ino(in.st.st_ino);
  std::string key = Key(in.st);
  std::set<std::string>& dumped = ctx.State<DumpState>().with_data;
  auto it = dumped.lower_bound(key);
  if (it != dumped.end() && it->starts_with(key)) {
    state.set_same_fifo_as(std::stoull(it->substr(key.size())));
  } else {
    dumped.insert(key + std::to_string(file->id()));
    state.set_has_data(true);
    state.set_data(STASIS_TRY(pipe::PeekPipeData(in, static_cast<uint32_t>(size))));
  }
  file->mutable_state()->PackFrom(state);
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file) {
  image::FifoState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("fifo state does not parse");
  std::string what = "FIFO " + state.path();
  int through;
  if (state.same_fifo_as() != 0) {
    auto it = ctx.local_fds.find(state.same_fifo_as());
    if (it == ctx.local_fds.end()) {
      return Error::Corrupt(
          fmt::format("{}: file {} is not before it", what, state.same_fifo_as()));
    }
    through = it->second;
  } else {
    through = STASIS_TRY(OpenFirst(ctx, state, what));
  }
  int accmode = static_cast<int>(state.flags() & O_ACCMODE);
  sys::UniqueFd fd(
      open(fmt::format("/proc/self/fd/{}", through).c_str(), accmode | O_NONBLOCK | O_CLOEXEC));
  if (!fd.valid()) return Error::Errno(fmt::format("{}: open (mode {:#o})", what, accmode));
  if (fcntl(fd.get(), F_SETFL, state.flags() & kSettableFlags) < 0) {
    return Error::Errno(fmt::format("{}: F_SETFL {:#o}", what, state.flags()));
  }
  return fd;
}

const FdKind kKind = {
    .name = kName,
    .summary = "Named FIFOs, with their unread data",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
};

}  // namespace stasis::kinds::fifo
