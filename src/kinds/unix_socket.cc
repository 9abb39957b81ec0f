#include "kinds/unix_socket.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "kinds/unix_socket_internal.h"

namespace stasis::kinds::unix_socket {
namespace {

// F_SETFL changes only these; a socket is always O_RDWR.
constexpr uint32_t kSettableFlags = O_APPEND | O_ASYNC | O_NOATIME | O_NONBLOCK;
// Linux 6.5+; glibc 2.36 and the 6.1 headers lack it.
constexpr int kSoPasspidfd = 76;
// The socket options this kind carries as plain ints (SOL_SOCKET).
struct IntOption {
  int opt;
  const char* name;
  int32_t (image::UnixSocketState::*get)() const;
  void (image::UnixSocketState::*set)(int32_t);
};
constexpr IntOption kIntOptions[] = {
    {SO_RCVLOWAT, "SO_RCVLOWAT", &image::UnixSocketState::rcvlowat,
     &image::UnixSocketState::set_rcvlowat},
    {SO_PEEK_OFF, "SO_PEEK_OFF", &image::UnixSocketState::peek_off,
     &image::UnixSocketState::set_peek_off},
};
struct BoolOption {
  int opt;
  const char* name;
  bool (image::UnixSocketState::*get)() const;
  void (image::UnixSocketState::*set)(bool);
};
constexpr BoolOption kBoolOptions[] = {
    {SO_PASSCRED, "SO_PASSCRED", &image::UnixSocketState::passcred,
     &image::UnixSocketState::set_passcred},
    {SO_PASSSEC, "SO_PASSSEC", &image::UnixSocketState::passsec,
     &image::UnixSocketState::set_passsec},
    {kSoPasspidfd, "SO_PASSPIDFD", &image::UnixSocketState::passpidfd,
     &image::UnixSocketState::set_passpidfd},
    {SO_OOBINLINE, "SO_OOBINLINE", &image::UnixSocketState::oobinline,
     &image::UnixSocketState::set_oobinline},
    {SO_TIMESTAMP, "SO_TIMESTAMP", &image::UnixSocketState::timestamp,
     &image::UnixSocketState::set_timestamp},
    {SO_TIMESTAMPNS, "SO_TIMESTAMPNS", &image::UnixSocketState::timestampns,
     &image::UnixSocketState::set_timestampns},
};

Result<int> GetInt(int fd, int opt, const char* name) {
  int value = 0;
  socklen_t len = sizeof value;
  if (getsockopt(fd, SOL_SOCKET, opt, &value, &len) < 0) {
    return Error::Errno(fmt::format("getsockopt({})", name));
  }
  return value;
}

Status SetInt(int fd, int opt, int value, const char* name) {
  if (setsockopt(fd, SOL_SOCKET, opt, &value, sizeof value) < 0) {
    return Error::Errno(fmt::format("setsockopt({}, {})", name, value));
  }
  return Ok();
}

Result<int64_t> GetTimeout(int fd, int opt, const char* name) {
  timeval tv = {};
  socklen_t len = sizeof tv;
  if (getsockopt(fd, SOL_SOCKET, opt, &tv, &len) < 0) {
    return Error::Errno(fmt::format("getsockopt({})", name));
  }
  return int64_t{tv.tv_sec} * 1000000 + tv.tv_usec;
}

Status SetTimeout(int fd, int opt, int64_t us, const char* name) {
  if (us == 0) return Ok();
  timeval tv = {static_cast<time_t>(us / 1000000), static_cast<suseconds_t>(us % 1000000)};
  if (setsockopt(fd, SOL_SOCKET, opt, &tv, sizeof tv) < 0) {
    return Error::Errno(fmt::format("setsockopt({}, {} us)", name, us));
  }
  return Ok();
}

// A classic or eBPF socket filter would drop or trim what the restore sends
// and what the task reads next; SO_GET_FILTER with no buffer gives the
// number of classic instructions, and fails for an eBPF program.
Status CheckNoFilter(int fd) {
  socklen_t len = 0;
  if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, nullptr, &len) == 0 && len == 0) return Ok();
  return Error::Unsupported("a socket filter (SO_ATTACH_FILTER/SO_ATTACH_BPF) is attached");
}

Status DumpOptions(int fd, image::UnixSocketState* state) {
  STASIS_TRY(CheckNoFilter(fd));
  for (const BoolOption& o : kBoolOptions) {
    Result<int> value = GetInt(fd, o.opt, o.name);
    if (!value.ok() && o.opt == kSoPasspidfd && value.error().errnum() == ENOPROTOOPT) continue;
    (state->*o.set)(STASIS_TRY(std::move(value)) != 0);
  }
  for (const IntOption& o : kIntOptions) (state->*o.set)(STASIS_TRY(GetInt(fd, o.opt, o.name)));
  state->set_sndbuf(STASIS_TRY(GetInt(fd, SO_SNDBUF, "SO_SNDBUF")));
  state->set_rcvbuf(STASIS_TRY(GetInt(fd, SO_RCVBUF, "SO_RCVBUF")));
  state->set_sndtimeo_us(STASIS_TRY(GetTimeout(fd, SO_SNDTIMEO, "SO_SNDTIMEO")));
  state->set_rcvtimeo_us(STASIS_TRY(GetTimeout(fd, SO_RCVTIMEO, "SO_RCVTIMEO")));
  return Ok();
}

// After the graph build, which may have raised SO_SNDBUF to refill queues.
Status RestoreOptions(int fd, const image::UnixSocketState& state) {
  for (const BoolOption& o : kBoolOptions) {
    if ((state.*o.get)()) STASIS_TRY(SetInt(fd, o.opt, 1, o.name));
  }
  // SO_*BUFFORCE: the dumped value may exceed net.core.[wr]mem_max; the
  // kernel doubles what it is given, as it did for the task.
  if (state.sndbuf() > 0)
    STASIS_TRY(SetInt(fd, SO_SNDBUFFORCE, state.sndbuf() / 2, "SO_SNDBUFFORCE"));
  if (state.rcvbuf() > 0)
    STASIS_TRY(SetInt(fd, SO_RCVBUFFORCE, state.rcvbuf() / 2, "SO_RCVBUFFORCE"));
  if (state.rcvlowat() > 1) STASIS_TRY(SetInt(fd, SO_RCVLOWAT, state.rcvlowat(), "SO_RCVLOWAT"));
  if (state.peek_off() >= 0) STASIS_TRY(SetInt(fd, SO_PEEK_OFF, state.peek_off(), "SO_PEEK_OFF"));
  STASIS_TRY(SetTimeout(fd, SO_SNDTIMEO, state.sndtimeo_us(), "SO_SNDTIMEO"));
  STASIS_TRY(SetTimeout(fd, SO_RCVTIMEO, state.rcvtimeo_us(), "SO_RCVTIMEO"));
  if (fcntl(fd, F_SETFL, state.flags() & kSettableFlags) < 0) {
    return Error::Errno(fmt::format("F_SETFL {:#o}", state.flags()));
  }
  return Ok();
}

}  // namespace

bool Matches(const FdDumpInput& in) {
  if (!S_ISSOCK(in.st.st_mode)) return false;
  int domain = 0;
  socklen_t len = sizeof domain;
  return getsockopt(in.local.get(), SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 && domain == AF_UNIX;
}

Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  image::UnixSocketState state;
  state.set_ino(in.st.st_ino);
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  // Before the graph, which changes SO_PEEK_OFF and SO_PASSCRED for a while.
  STASIS_TRY_CTX(DumpOptions(in.local.get(), &state), what);
  if (!std::exchange(ctx.State<DumpState>().graph_dumped, true)) {
    STASIS_TRY(DumpGraph(ctx, in, state.mutable_graph()));
  }
  if (!ctx.State<DumpState>().in_graph.contains(in.st.st_ino)) {
    return Error::Unsupported(what +
                              ": sock_diag does not list it: a unix socket of another network "
                              "namespace is not supported yet");
  }
  file->mutable_state()->PackFrom(state);
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file) {
  image::UnixSocketState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("unix socket state does not parse");
  std::string what = fmt::format("socket:[{}]", state.ino());
  Sockets& sockets = ctx.State<Sockets>();
  if (state.has_graph()) STASIS_TRY_CTX(BuildGraph(state.graph(), &sockets), "unix sockets");
  auto built = sockets.by_ino.extract(state.ino());
  if (built.empty()) return Error::Corrupt(what + ": not in the image's unix socket graph");
  sys::UniqueFd fd = std::move(built.mapped());
  STASIS_TRY_CTX(RestoreOptions(fd.get(), state), what);
  return fd;
}

const FdKind kKind = {
    .name = kName,
    .summary =
        "Unix sockets of all three types: pairs, bound and listening sockets with their backlog, "
        "queued data with boundaries and credentials, options; --external-unix=close",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
    .apply_late = ApplyLate,
};

}  // namespace stasis::kinds::unix_socket
