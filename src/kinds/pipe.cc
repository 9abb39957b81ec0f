#include "kinds/pipe.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <climits>
#include <map>
#include <set>

#include "fd_kinds.pb.h"

namespace stasis::kinds::pipe {
namespace {

constexpr uint32_t kDefaultPipeSize = 65536;
// F_SETFL changes only these; the access mode comes from the end itself.
constexpr uint32_t kSettableFlags = O_APPEND | O_ASYNC | O_DIRECT | O_NOATIME | O_NONBLOCK;

bool IsWriteEnd(uint32_t flags) { return (flags & O_ACCMODE) == O_WRONLY; }

// No process holds the other end at all: a read end then polls POLLHUP
// (no writers), a write end POLLERR (no readers). jupyter_client leaves
// every kernel's stdin like this: it closes the writer right after spawn.
bool Widowed(const FdDumpInput& in) {
  bool write_end = IsWriteEnd(in.info.flags);
  pollfd p = {in.local.get(), static_cast<short>(write_end ? POLLOUT : POLLIN), 0};
  if (poll(&p, 1, 0) < 0) return false;
  return write_end ? (p.revents & POLLERR) != 0 : (p.revents & POLLHUP) != 0;
}

// Pipes whose buffered data is already in the image, by inode: one of
// their ends carries it.
struct DumpState {
  std::set<uint64_t> with_data;
};

// A pipe recreated by the restorer. The first description asked of each end
// is the one pipe2() made; later ones are new descriptions of the same end.
struct RestoredPipe {
  sys::UniqueFd ends[2];  // [0] read, [1] write
  bool taken[2] = {false, false};
};

// The pipes recreated so far, by pipe inode at dump time.
struct RestoreState {
  std::map<uint64_t, RestoredPipe> pipes;
};

bool OtherEndInTree(const DumpContext& ctx, const FdDumpInput& in) {
  bool want_write = !IsWriteEnd(in.info.flags);
  for (const FdIndexEntry& e : ctx.fd_index) {
    if (e.link == in.link && IsWriteEnd(e.flags) == want_write) return true;
  }
  return false;
}

Result<RestoredPipe*> CreatePipe(RestoreContext& ctx, const image::PipeEndState& state) {
  std::string what = fmt::format("pipe:[{}]", state.pipe_ino());
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) return Error::Errno(what + ": pipe2");
  RestoredPipe& pipe = ctx.State<RestoreState>().pipes[state.pipe_ino()];
  pipe.ends[0].reset(fds[0]);
  pipe.ends[1].reset(fds[1]);
  if (state.pipe_size() != kDefaultPipeSize && fcntl(fds[1], F_SETPIPE_SZ, state.pipe_size()) < 0) {
    return Error::Errno(fmt::format("{}: F_SETPIPE_SZ {}", what, state.pipe_size()));
  }
  return &pipe;
}

Status FillPipe(const image::PipeEndState& state, int write_fd) {
  const std::string& data = state.data();
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(write_fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Error::Errno(fmt::format("pipe:[{}]: refill", state.pipe_ino()));
    done += static_cast<size_t>(n);
  }
  return Ok();
}

}  // namespace

Result<std::string> PeekPipeData(const FdDumpInput& in, uint32_t pipe_size) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  std::string self = fmt::format("/proc/self/fd/{}", in.local.get());
  sys::UniqueFd reader(open(self.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!reader.valid()) return Error::Errno(what + ": reopen for reading");
  int avail = 0;
  if (ioctl(reader.get(), FIONREAD, &avail) < 0) return Error::Errno(what + ": FIONREAD");
  if (avail == 0) return std::string();
  int scratch[2];
  if (pipe2(scratch, O_CLOEXEC | O_NONBLOCK) < 0) return Error::Errno(what + ": pipe2");
  sys::UniqueFd scratch_r(scratch[0]), scratch_w(scratch[1]);
  if (fcntl(scratch_w.get(), F_SETPIPE_SZ, pipe_size) < 0) {
    return Error::Errno(fmt::format("{}: scratch pipe of {} bytes", what, pipe_size));
  }
  ssize_t copied = tee(reader.get(), scratch_w.get(), INT_MAX, SPLICE_F_NONBLOCK);
  if (copied < 0) return Error::Errno(what + ": tee");
  if (copied != avail) {
    return Error(ErrorCode::kFailed,
                 fmt::format("{}: tee copied {} of {} buffered bytes", what, copied, avail));
  }
  std::string data(static_cast<size_t>(copied), '\0');
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = read(scratch_r.get(), data.data() + done, data.size() - done);
    if (n <= 0) return Error::Errno(what + ": read scratch pipe");
    done += static_cast<size_t>(n);
  }
  return data;
}

bool Matches(const FdDumpInput& in) {
  return S_ISFIFO(in.st.st_mode) && in.link.starts_with("pipe:");
}

Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  if ((in.info.flags & O_ACCMODE) == O_RDWR) {
    return Error::Unsupported(what + ": a pipe end open for both reading and writing");
  }
  if (in.info.flags & O_DIRECT) return Error::Unsupported(what + ": packet-mode pipe (O_DIRECT)");
  bool widowed = false;
  if (!OtherEndInTree(ctx, in)) {
    widowed = Widowed(in);
    if (!widowed) {
      return Error::Unsupported(what + ": the other end of this pipe is outside the dumped tree");
    }
  }
  int size = fcntl(in.local.get(), F_GETPIPE_SZ);
  if (size < 0) return Error::Errno(what + ": F_GETPIPE_SZ");
  image::PipeEndState state;
  state.set_pipe_ino(in.st.st_ino);
  state.set_write_end(IsWriteEnd(in.info.flags));
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  state.set_pipe_size(static_cast<uint32_t>(size));
  state.set_widowed(widowed);
  if (ctx.State<DumpState>().with_data.insert(in.st.st_ino).second) {
    state.set_has_data(true);
    state.set_data(STASIS_TRY(PeekPipeData(in, static_cast<uint32_t>(size))));
  }
  file->mutable_state()->PackFrom(state);
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file) {
  image::PipeEndState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("pipe state does not parse");
  std::string what = fmt::format("pipe:[{}]", state.pipe_ino());
  std::map<uint64_t, RestoredPipe>& pipes = ctx.State<RestoreState>().pipes;
  auto it = pipes.find(state.pipe_ino());
  RestoredPipe* pipe = it != pipes.end() ? &it->second : STASIS_TRY(CreatePipe(ctx, state));
  if (state.has_data()) STASIS_TRY(FillPipe(state, pipe->ends[1].get()));
  int end = state.write_end() ? 1 : 0;
  // Nobody held the other end: neither does anyone now.
  if (state.widowed()) pipe->ends[1 - end].reset();
  sys::UniqueFd fd;
  if (!pipe->taken[end]) {
    pipe->taken[end] = true;
    fd.reset(fcntl(pipe->ends[end].get(), F_DUPFD_CLOEXEC, 0));
  } else {
    // Another open file description of the same end.
    std::string self = fmt::format("/proc/self/fd/{}", pipe->ends[end].get());
    fd.reset(open(self.c_str(), (state.write_end() ? O_WRONLY : O_RDONLY) | O_CLOEXEC));
  }
  if (!fd.valid()) return Error::Errno(what + ": new description");
  if (fcntl(fd.get(), F_SETFL, state.flags() & kSettableFlags) < 0) {
    return Error::Errno(fmt::format("{}: F_SETFL {:#o}", what, state.flags()));
  }
  return fd;
}

const FdKind kKind = {
    .name = kName,
    .summary = "Pipes between processes of the tree, with their unread data",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
};

}  // namespace stasis::kinds::pipe
