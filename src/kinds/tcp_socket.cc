#include "kinds/tcp_socket.h"

#include <fcntl.h>
#include <fmt/format.h>

#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include "sys/sockopt.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>

#include "kinds/moving_host.h"
#include "kinds/tcp_pending.h"
#include "kinds/tcp_states.h"
#include "sys/flow.h"
#include "tcp_socket.pb.h"

namespace stasis::kinds::tcp_socket {
namespace {

using image::TcpSocketState;

constexpr uint32_t kSettableFlags = O_NONBLOCK | O_ASYNC;

Result<std::string> SockName(int fd, bool peer) {
  sockaddr_storage ss = {};
  socklen_t len = sizeof(ss);
  int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
               : getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (r < 0) return Error::Errno(peer ? "getpeername" : "getsockname");
  return std::string(reinterpret_cast<const char*>(&ss), len);
}

bool IsTcp(int fd) {
  sys::SocketKind k;
  return sys::GetSocketKind(fd, &k) && (k.domain == AF_INET || k.domain == AF_INET6) &&
         k.type == SOCK_STREAM && k.protocol == IPPROTO_TCP;
}

// The other end of a connection, among the tree's sockets.
bool PeerInTree(const DumpContext& ctx, const FdDumpInput& in, const std::string& local,
                const std::string& peer) {
  for (const FdDumpInput* other : ctx.inputs) {
    if (other == &in || !S_ISSOCK(other->st.st_mode) || !IsTcp(other->local.get())) continue;
    Result<std::string> their_local = SockName(other->local.get(), false);
    Result<std::string> their_peer = SockName(other->local.get(), true);
    if (their_local.ok() && their_peer.ok() && their_local.value() == peer &&
        their_peer.value() == local) {
      return true;
    }
  }
  return false;
}

bool Connected(int state) { return state == TCP_ESTABLISHED || tcp_states::IsHalfClosed(state); }

// A connection to an outside peer stays with the host's address, which a
// migration to another machine leaves behind.
Status CheckPeerCanFollow(const DumpContext& ctx, const FdDumpInput& in, const std::string& local,
                          const std::string& peer) {
  if (!ctx.policy.moving_host) return Ok();
  return OutsidePeerCannotMove("tcp", in, local, peer);
}

// The lock's name, for the image: the restore lifts it.
Result<std::string> LockFlow(DumpContext& ctx, const sys::TcpFlow& flow) {
  if (!ctx.hold_flow) return Error::Invalid("no network lock for a connection to an outside peer");
  return ctx.hold_flow(flow);
}

Status DumpOptions(int fd, TcpSocketState* s) {
  s->set_reuseaddr(STASIS_TRY(sys::GetIntOpt(fd, SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR")));
  s->set_reuseport(STASIS_TRY(sys::GetIntOpt(fd, SOL_SOCKET, SO_REUSEPORT, "SO_REUSEPORT")));
  s->set_keepalive(STASIS_TRY(sys::GetIntOpt(fd, SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE")));
  s->set_keepidle(STASIS_TRY(sys::GetIntOpt(fd, IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE")));
  s->set_keepintvl(STASIS_TRY(sys::GetIntOpt(fd, IPPROTO_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL")));
  s->set_keepcnt(STASIS_TRY(sys::GetIntOpt(fd, IPPROTO_TCP, TCP_KEEPCNT, "TCP_KEEPCNT")));
  s->set_nodelay(STASIS_TRY(sys::GetIntOpt(fd, IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY")));
  linger l = {};
  socklen_t len = sizeof(l);
  if (getsockopt(fd, SOL_SOCKET, SO_LINGER, &l, &len) < 0) return Error::Errno("SO_LINGER");
  s->set_linger_on(l.l_onoff);
  s->set_linger_secs(l.l_linger);
  if (s->family() == AF_INET6) {
    s->set_v6only(STASIS_TRY(sys::GetIntOpt(fd, IPPROTO_IPV6, IPV6_V6ONLY, "IPV6_V6ONLY")));
  }
  return Ok();
}

// Copies a repair queue without consuming it.
Result<std::string> PeekQueue(int fd, int queue, size_t len) {
  STASIS_TRY(sys::SetIntOpt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE"));
  std::string data(len, '\0');
  if (len == 0) return data;
  ssize_t n = recv(fd, data.data(), len, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0) return Error::Errno("peek TCP queue");
  if (static_cast<size_t>(n) != len) {
    return Error(ErrorCode::kFailed, fmt::format("peeked {} of {} queued bytes", n, len));
  }
  return data;
}

Result<int> Ioctl(int fd, unsigned long req, const char* name) {
  int v = 0;
  if (ioctl(fd, req, &v) < 0) return Error::Errno(name);
  return v;
}

// Holds the connection still in repair mode and reads it. Registers the
// way back for a tree that keeps running.
Status DumpEstablished(DumpContext& ctx, int fd, TcpSocketState* s) {
  STASIS_TRY(sys::SetIntOpt(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON, "TCP_REPAIR"));
  auto held = std::make_shared<sys::UniqueFd>(fcntl(fd, F_DUPFD_CLOEXEC, 0));
  ctx.undo_if_kept.push_back([held] {
    int off = TCP_REPAIR_OFF;
    setsockopt(held->get(), IPPROTO_TCP, TCP_REPAIR, &off, sizeof(off));
  });
  int outq = STASIS_TRY(Ioctl(fd, SIOCOUTQ, "SIOCOUTQ"));
  int unsent = STASIS_TRY(Ioctl(fd, SIOCOUTQNSD, "SIOCOUTQNSD"));
  int inq = STASIS_TRY(Ioctl(fd, SIOCINQ, "SIOCINQ"));
  tcp_states::AccountFins(s->state(), &outq, &unsent, s);
  s->set_send_queue(STASIS_TRY(PeekQueue(fd, TCP_SEND_QUEUE, outq)));
  s->set_send_seq(
      STASIS_TRY(sys::GetIntOpt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ(send)")));
  s->set_unsent_len(unsent);
  s->set_recv_queue(STASIS_TRY(PeekQueue(fd, TCP_RECV_QUEUE, inq)));
  s->set_recv_seq(
      STASIS_TRY(sys::GetIntOpt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ(recv)")));
  STASIS_TRY(sys::SetIntOpt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "TCP_REPAIR_QUEUE"));
  s->set_mss(STASIS_TRY(sys::GetIntOpt(fd, IPPROTO_TCP, TCP_MAXSEG, "TCP_MAXSEG")));
  s->set_timestamp(STASIS_TRY(sys::GetIntOpt(fd, IPPROTO_TCP, TCP_TIMESTAMP, "TCP_TIMESTAMP")));
  tcp_repair_window w = {};
  socklen_t len = sizeof(w);
  if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, &len) < 0) {
    return Error::Errno("TCP_REPAIR_WINDOW");
  }
  s->set_window(std::string(reinterpret_cast<const char*>(&w), sizeof(w)));
  return Ok();
}

Status SetOptions(int fd, const TcpSocketState& s) {
  STASIS_TRY(sys::SetIntOpt(fd, SOL_SOCKET, SO_KEEPALIVE, s.keepalive(), "SO_KEEPALIVE"));
  STASIS_TRY(sys::SetIntOpt(fd, IPPROTO_TCP, TCP_KEEPIDLE, s.keepidle(), "TCP_KEEPIDLE"));
  STASIS_TRY(sys::SetIntOpt(fd, IPPROTO_TCP, TCP_KEEPINTVL, s.keepintvl(), "TCP_KEEPINTVL"));
  STASIS_TRY(sys::SetIntOpt(fd, IPPROTO_TCP, TCP_KEEPCNT, s.keepcnt(), "TCP_KEEPCNT"));
  STASIS_TRY(sys::SetIntOpt(fd, IPPROTO_TCP, TCP_NODELAY, s.nodelay(), "TCP_NODELAY"));
  linger l = {s.linger_on(), s.linger_secs()};
  if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)) < 0) return Error::Errno("SO_LINGER");
  if (fcntl(fd, F_SETFL, s.flags() & kSettableFlags) < 0) return Error::Errno("F_SETFL");
  return Ok();
}

// A socket of the right family, with what must be set before bind().
Result<sys::UniqueFd> NewSocket(const TcpSocketState& s) {
  sys::UniqueFd fd(socket(s.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
  if (!fd.valid()) return Error::Errno("socket");
  STASIS_TRY(sys::SetIntOpt(fd.get(), SOL_SOCKET, SO_REUSEPORT, s.reuseport(), "SO_REUSEPORT"));
  if (s.family() == AF_INET6) {
    STASIS_TRY(sys::SetIntOpt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, s.v6only(), "IPV6_V6ONLY"));
  }
  return fd;
}

Status Bind(int fd, const std::string& addr) {
  if (bind(fd, reinterpret_cast<const sockaddr*>(addr.data()), addr.size()) < 0) {
    return Error::Errno("bind " + ShowInetAddr(addr));
  }
  return Ok();
}

Status Send(int fd, const char* data, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, data, len, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Error::Errno("refill TCP queue");
    data += n;
    len -= static_cast<size_t>(n);
  }
  return Ok();
}

Status RepairOptions(int fd, const TcpSocketState& s) {
  tcp_repair_opt opts[4];
  int n = 0;
  opts[n++] = {TCPOPT_MAXSEG, s.mss()};
  if (s.tcpi_options() & TCPI_OPT_WSCALE) {
    opts[n++] = {TCPOPT_WINDOW, s.snd_wscale() | (s.rcv_wscale() << 16)};
  }
  if (s.tcpi_options() & TCPI_OPT_SACK) opts[n++] = {TCPOPT_SACK_PERMITTED, 0};
  if (s.tcpi_options() & TCPI_OPT_TIMESTAMPS) opts[n++] = {TCPOPT_TIMESTAMP, 0};
  if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts, n * sizeof(opts[0])) < 0) {
    return Error::Errno("TCP_REPAIR_OPTIONS");
  }
  if (s.tcpi_options() & TCPI_OPT_TIMESTAMPS) {
    STASIS_TRY(sys::SetIntOpt(fd, IPPROTO_TCP, TCP_TIMESTAMP, s.timestamp(), "TCP_TIMESTAMP"));
  }
  return Ok();
}

// The peer's retransmissions backed off while the lock dropped them: the
// restore has it retransmit now (net/tcp_nudge.h), before anything we send
// acknowledges new data, since that would restart its retransmission
// timer. Not when it has nothing more to send.
std::optional<sys::PeerNudge> Nudge(const TcpSocketState& s) {
  if (s.fin_received()) return std::nullopt;
  tcp_repair_window w = {};
  std::memcpy(&w, s.window().data(), std::min(s.window().size(), sizeof(w)));
  return sys::PeerNudge{{s.local(), s.peer()}, w.rcv_wup, s.recv_seq()};
}

// Rebuilds the connection in repair mode; the finisher releases it once
// every socket of the image exists.
Result<sys::UniqueFd> RestoreEstablished(RestoreContext& ctx, const TcpSocketState& s) {
  sys::UniqueFd fd = STASIS_TRY(NewSocket(s));
  int f = fd.get();
  STASIS_TRY(sys::SetIntOpt(f, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON, "TCP_REPAIR"));
  STASIS_TRY(Bind(f, s.local()));
  const std::string& rq = s.recv_queue();
  const std::string& sq = s.send_queue();
  STASIS_TRY(sys::SetIntOpt(f, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE"));
  STASIS_TRY(sys::SetIntOpt(f, IPPROTO_TCP, TCP_QUEUE_SEQ,
                            static_cast<int>(s.recv_seq() - rq.size()), "TCP_QUEUE_SEQ(recv)"));
  STASIS_TRY(sys::SetIntOpt(f, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE"));
  STASIS_TRY(sys::SetIntOpt(f, IPPROTO_TCP, TCP_QUEUE_SEQ,
                            static_cast<int>(tcp_states::SendDataEnd(s) - sq.size()),
                            "TCP_QUEUE_SEQ(send)"));
  if (connect(f, reinterpret_cast<const sockaddr*>(s.peer().data()), s.peer().size()) < 0) {
    return Error::Errno("repair connect to " + ShowInetAddr(s.peer()));
  }
  STASIS_TRY(RepairOptions(f, s));
  if (sq.size() > 0) {
    // Room for the whole queue; the kernel doubles the value.
    STASIS_TRY(sys::SetIntOpt(f, SOL_SOCKET, SO_SNDBUFFORCE, static_cast<int>(sq.size() + 65536),
                              "SO_SNDBUFFORCE"));
  }
  STASIS_TRY(sys::SetIntOpt(f, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE"));
  STASIS_TRY(Send(f, rq.data(), rq.size()));
  // A peer outside the tree lost what we sent while the lock was up: send
  // everything it has not acknowledged again as soon as the lock is down,
  // rather than on our first RTO (a second after a repair restore).
  bool resend = !s.lock_table().empty();
  size_t sent = resend ? 0 : sq.size() - s.unsent_len();
  STASIS_TRY(sys::SetIntOpt(f, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE"));
  STASIS_TRY(Send(f, sq.data(), sent));
  STASIS_TRY(tcp_states::ReplayInRepair(f, s, resend));
  STASIS_TRY(sys::SetIntOpt(f, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "TCP_REPAIR_QUEUE"));
  if (s.window().size() == sizeof(tcp_repair_window) &&
      setsockopt(f, IPPROTO_TCP, TCP_REPAIR_WINDOW, s.window().data(), s.window().size()) < 0) {
    return Error::Errno("TCP_REPAIR_WINDOW");
  }
  auto held = std::make_shared<sys::UniqueFd>(fcntl(f, F_DUPFD_CLOEXEC, 0));
  std::string unsent = sq.substr(sent);
  // The socket owns the connection again once it leaves repair mode. Its
  // window probe is dropped while the lock is up; once the lock is lifted
  // (what the peer sent meanwhile handed to it), the peer is nudged and
  // what was never sent, or must be sent again, is sent.
  auto send_rest = [held, unsent, s, resend]() -> Status {
    int h = held->get();
    // Never sent (or to be sent again): sent now, as ordinary data.
    STASIS_TRY(Send(h, unsent.data(), unsent.size()));
    STASIS_TRY(tcp_states::ReplayAfterRepair(h, s, resend));
    STASIS_TRY(sys::SetIntOpt(h, SOL_SOCKET, SO_REUSEADDR, s.reuseaddr(), "SO_REUSEADDR"));
    STASIS_TRY(SetOptions(h, s));
    return Ok();
  };
  ctx.finishers.push_back([&ctx, held, s, resend, send_rest]() -> Status {
    STASIS_TRY(sys::SetIntOpt(held->get(), IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF, "TCP_REPAIR"));
    if (!resend) return send_rest();
    ctx.after_unlock.push_back({s.lock_table(), Nudge(s), send_rest});
    return Ok();
  });
  return fd;
}

}  // namespace

bool Matches(const FdDumpInput& in) { return S_ISSOCK(in.st.st_mode) && IsTcp(in.local.get()); }

// A connection whose peer is outside the tree; not one waiting in a
// listener's accept queue (it goes with the listener) nor one whose peer is
// dumped too.
Result<std::vector<sys::TcpFlow>> Flows(DumpContext& ctx, const FdDumpInput& in) {
  int fd = in.local.get();
  tcp_info info = {};
  socklen_t len = sizeof(info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0 || !Connected(info.tcpi_state)) {
    return std::vector<sys::TcpFlow>();
  }
  Result<std::string> local = SockName(fd, false);
  Result<std::string> peer = SockName(fd, true);
  if (!local.ok() || !peer.ok()) return std::vector<sys::TcpFlow>();  // its own dump says why
  Result<bool> queued = tcp_pending::WaitsInAcceptQueue(ctx, in, *local, *peer);
  if (!queued.ok() || *queued || PeerInTree(ctx, in, *local, *peer)) {
    return std::vector<sys::TcpFlow>();
  }
  // Before the lock is taken: nothing of the tree is touched.
  STASIS_TRY(CheckPeerCanFollow(ctx, in, *local, *peer));
  return std::vector<sys::TcpFlow>{{*local, *peer}};
}

Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  int fd = in.local.get();
  TcpSocketState s;
  s.set_family(STASIS_TRY(sys::GetIntOpt(fd, SOL_SOCKET, SO_DOMAIN, "SO_DOMAIN")));
  s.set_flags(in.info.flags & ~O_CLOEXEC);
  tcp_info info = {};
  socklen_t len = sizeof(info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0)
    return Error::Errno(what + ": TCP_INFO");
  s.set_state(info.tcpi_state);
  s.set_local(STASIS_TRY_CTX(SockName(fd, false), what));
  STASIS_TRY_CTX(DumpOptions(fd, &s), what);
  switch (info.tcpi_state) {
    case TCP_LISTEN:
      // For a listener the kernel reports its accept queue in tcpi_unacked
      // and the backlog it was given in tcpi_sacked.
      STASIS_TRY(tcp_pending::DumpListener(ctx, in, s.local(), info.tcpi_unacked));
      s.set_backlog(info.tcpi_sacked);
      break;
    case TCP_FIN_WAIT1:
    case TCP_FIN_WAIT2:
    case TCP_CLOSE_WAIT:
    case TCP_LAST_ACK:
    case TCP_CLOSING:
    case TCP_ESTABLISHED: {
      STASIS_TRY_CTX(tcp_states::DumpShutdown(fd, &s), what);
      s.set_peer(STASIS_TRY_CTX(SockName(fd, true), what));
      s.set_waits_in_accept_queue(
          STASIS_TRY_CTX(tcp_pending::WaitsInAcceptQueue(ctx, in, s.local(), s.peer()), what));
      if (!s.waits_in_accept_queue() && !PeerInTree(ctx, in, s.local(), s.peer())) {
        // Flows() refused it already unless its handshake ended since.
        STASIS_TRY(CheckPeerCanFollow(ctx, in, s.local(), s.peer()));
        // The peer stays: hold its packets until the socket is back.
        s.set_lock_table(
            STASIS_TRY_CTX(LockFlow(ctx, {s.local(), s.peer()}),
                           fmt::format("{}: TCP connection {} -> {}", what, ShowInetAddr(s.local()),
                                       ShowInetAddr(s.peer()))));
      }
      s.set_tcpi_options(info.tcpi_options);
      s.set_snd_wscale(info.tcpi_snd_wscale);
      s.set_rcv_wscale(info.tcpi_rcv_wscale);
      STASIS_TRY_CTX(DumpEstablished(ctx, fd, &s), what);
      break;
    }
    case TCP_CLOSE:
      STASIS_TRY_CTX(tcp_states::DumpClosed(fd, &s), what);
      break;
    default:
      return tcp_states::Refuse(what, in.st.st_ino, s.family(), info.tcpi_state);
  }
  file->mutable_state()->PackFrom(s);
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file) {
  TcpSocketState s;
  if (!file.state().UnpackTo(&s)) return Error::Corrupt("tcp state does not parse");
  std::string what = fmt::format("TCP socket {}", ShowInetAddr(s.local()));
  // A client waiting in an accept queue is bound here and connected by a
  // late record (tcp_pending.h).
  if ((s.state() == TCP_ESTABLISHED || tcp_states::IsHalfClosed(s.state())) &&
      !s.waits_in_accept_queue()) {
    return STASIS_TRY_CTX(RestoreEstablished(ctx, s), what + " -> " + ShowInetAddr(s.peer()));
  }
  if (s.ended()) {
    sys::UniqueFd fd = STASIS_TRY_CTX(tcp_states::RestoreEnded(s), what + " (closed)");
    STASIS_TRY_CTX(SetOptions(fd.get(), s), what);
    return fd;
  }
  sys::UniqueFd fd = STASIS_TRY_CTX(NewSocket(s), what);
  const sockaddr_in* in = reinterpret_cast<const sockaddr_in*>(s.local().data());
  bool bound = s.local().size() >= sizeof(sockaddr_in) && in->sin_port != 0;
  // A listener binds next to connections that still use its port.
  STASIS_TRY(sys::SetIntOpt(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR"));
  if (bound) STASIS_TRY_CTX(Bind(fd.get(), s.local()), what);
  if (s.state() == TCP_LISTEN && listen(fd.get(), static_cast<int>(s.backlog())) < 0) {
    return Error::Errno(what + ": listen");
  }
  STASIS_TRY(sys::SetIntOpt(fd.get(), SOL_SOCKET, SO_REUSEADDR, s.reuseaddr(), "SO_REUSEADDR"));
  STASIS_TRY_CTX(SetOptions(fd.get(), s), what);
  return fd;
}

const FdKind kKind = {
    .name = kName,
    .summary =
        "TCP, IPv4 and IPv6: listeners with their accept queues, established and closing "
        "connections with TCP_REPAIR",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
    .apply_late = tcp_pending::ApplyLate,
    .flows = Flows,
};

}  // namespace stasis::kinds::tcp_socket
