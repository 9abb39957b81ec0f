// Connections waiting in a TCP listener's accept queue (tcp_pending.h).
#include "kinds/tcp_pending.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "sys/sockopt.h"
#include "tcp_pending.pb.h"

namespace stasis::kinds::tcp_pending {

// An address and port, IPv4 as v4-mapped IPv6, so that a dual-stack
// listener's queued sockets compare with their IPv4 clients.
struct Endpoint {
  std::array<uint8_t, 16> addr = {};
  uint16_t port = 0;  // host order
  bool operator==(const Endpoint&) const = default;
};

struct DiagSock {
  int state;
  Endpoint src, dst;
  uint32_t inode;
};

// A TCP socket of the tree.
struct TreeSock {
  const FdDumpInput* in;
  int state;
  std::string local, peer;  // getsockname, getpeername (when connected)
  Endpoint local_ep, peer_ep;
};

// Of one network namespace: sock_diag answers for the namespace its
// netlink socket was made in.
struct NsQueues {
  std::vector<DiagSock> diag;
  std::vector<TreeSock> tree;
};

// The accept queues of the tree's TCP listeners, found once per dump
// (DumpContext::State).
struct Queues {
  std::map<uint64_t, NsQueues> by_netns;  // by namespace inode
};

namespace {

constexpr auto kConnectTimeout = std::chrono::seconds(5);

Endpoint FromV4(const void* addr4, uint16_t port) {
  Endpoint e;
  e.addr[10] = e.addr[11] = 0xff;
  std::memcpy(e.addr.data() + 12, addr4, 4);
  e.port = port;
  return e;
}

Endpoint FromSockaddr(const std::string& sa) {
  const sockaddr* s = reinterpret_cast<const sockaddr*>(sa.data());
  if (sa.size() >= sizeof(sockaddr_in) && s->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(s);
    return FromV4(&in->sin_addr, ntohs(in->sin_port));
  }
  Endpoint e;
  if (sa.size() >= sizeof(sockaddr_in6) && s->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(s);
    std::memcpy(e.addr.data(), &in6->sin6_addr, 16);
    e.port = ntohs(in6->sin6_port);
  }
  return e;
}

bool IsAny(const Endpoint& e) {
  static const std::array<uint8_t, 16> kAny6 = {};
  static const Endpoint kAny4 = FromV4("\0\0\0\0", 0);
  return e.addr == kAny6 || e.addr == kAny4.addr;
}

bool IsMapped(const Endpoint& e) {
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return std::memcmp(e.addr.data(), kMapped, 12) == 0;
}

std::string Show(const Endpoint& e) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (IsMapped(e)) {
    inet_ntop(AF_INET, e.addr.data() + 12, host, sizeof host);
    return fmt::format("{}:{}", host, e.port);
  }
  inet_ntop(AF_INET6, e.addr.data(), host, sizeof host);
  return fmt::format("[{}]:{}", host, e.port);
}

// A listener bound to `listener` would take a connection to `dst`.
bool Serves(const Endpoint& listener, const Endpoint& dst) {
  return listener.port == dst.port && (IsAny(listener) || listener.addr == dst.addr);
}

// How well a listener bound to `l` matches `dst`, as the kernel's lookup
// prefers: its exact address, then the wildcard of dst's own family
// (0.0.0.0 for IPv4), then [::] for IPv4 (dual-stack). 0: it does not.
int Match(const Endpoint& l, const Endpoint& dst) {
  if (!Serves(l, dst)) return 0;
  if (l.addr == dst.addr) return 3;
  return IsMapped(l) == IsMapped(dst) ? 2 : 1;
}

// --- sock_diag for TCP (net/ipv4/inet_diag.c) ---------------------------------

constexpr unsigned long kSiocGskns = 0x894C;  // SIOCGSKNS: the socket's network namespace

Result<sys::UniqueFd> NetnsOf(int sock) {
  sys::UniqueFd ns(ioctl(sock, kSiocGskns));
  if (!ns.valid()) return Error::Errno("SIOCGSKNS");
  return ns;
}

Result<uint64_t> Inode(int fd) {
  struct stat st;
  if (fstat(fd, &st) < 0) return Error::Errno("fstat");
  return st.st_ino;
}

// A sock_diag socket of network namespace `netns`, made by a thread that
// enters it (a thread's network namespace is its own).
Result<sys::UniqueFd> DiagSocketIn(int netns) {
  int fd = -1, err = 0;
  std::thread maker([&] {
    if (setns(netns, CLONE_NEWNET) < 0) {
      err = errno;
      return;
    }
    fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) err = errno;
  });
  maker.join();
  if (fd < 0) return Error::FromErrno("socket(NETLINK_SOCK_DIAG) in the sockets' namespace", err);
  return sys::UniqueFd(fd);
}

Status DiagFamily(const sys::UniqueFd& nl, int family, std::vector<DiagSock>* out) {
  struct {
    nlmsghdr nlh;
    inet_diag_req_v2 req;
  } msg = {};
  msg.nlh.nlmsg_len = sizeof msg;
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  msg.req.sdiag_family = static_cast<uint8_t>(family);
  msg.req.sdiag_protocol = IPPROTO_TCP;
  msg.req.idiag_states = ~0u;  // request sockets (SYN_RECV) included
  sockaddr_nl kernel = {};
  kernel.nl_family = AF_NETLINK;
  if (sendto(nl.get(), &msg, sizeof msg, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) <
      0) {
    return Error::Errno("sock_diag: send the TCP dump request");
  }
  std::vector<char> buf(64 << 10);
  for (;;) {
    ssize_t n = recv(nl.get(), buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Error::Errno("sock_diag: receive the TCP dump");
    int len = static_cast<int>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, len);
         h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type == NLMSG_DONE) return Ok();
      if (h->nlmsg_type == NLMSG_ERROR) {
        return Error(ErrorCode::kFailed, "sock_diag: the TCP dump answered an error");
      }
      if (h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) continue;
      inet_diag_msg m;
      std::memcpy(&m, NLMSG_DATA(h), sizeof m);
      DiagSock s{m.idiag_state, {}, {}, m.idiag_inode};
      uint16_t sport = ntohs(m.id.idiag_sport), dport = ntohs(m.id.idiag_dport);
      if (m.idiag_family == AF_INET) {
        s.src = FromV4(&m.id.idiag_src[0], sport);
        s.dst = FromV4(&m.id.idiag_dst[0], dport);
      } else {
        std::memcpy(s.src.addr.data(), m.id.idiag_src, 16);
        std::memcpy(s.dst.addr.data(), m.id.idiag_dst, 16);
        s.src.port = sport;
        s.dst.port = dport;
      }
      out->push_back(s);
    }
  }
}

// The listener (its bound address) that took the connection whose server
// end is at `dst`: the best match among sock_diag's listeners.
Endpoint ListenerFor(const std::vector<DiagSock>& diag, const Endpoint& dst) {
  Endpoint best;
  int score = 0;
  for (const DiagSock& d : diag) {
    int m = d.state == TCP_LISTEN ? Match(d.src, dst) : 0;
    if (m > score) {
      score = m;
      best = d.src;
    }
  }
  return best;
}

Result<std::string> Name(int fd, bool peer) {
  sockaddr_storage ss = {};
  socklen_t len = sizeof ss;
  int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
               : getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (r < 0) return Error::Errno(peer ? "getpeername" : "getsockname");
  return std::string(reinterpret_cast<const char*>(&ss), len);
}

Result<int> TcpState(int fd) {
  tcp_info info = {};
  socklen_t len = sizeof info;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0) return Error::Errno("TCP_INFO");
  return static_cast<int>(info.tcpi_state);
}

bool IsTcp(const FdDumpInput& in) {
  sys::SocketKind k;
  return S_ISSOCK(in.st.st_mode) && sys::GetSocketKind(in.local.get(), &k) &&
         (k.domain == AF_INET || k.domain == AF_INET6) && k.type == SOCK_STREAM &&
         k.protocol == IPPROTO_TCP;
}

// sock_diag and the tree's TCP sockets, once per dump: the tree is frozen.
// of the namespace of the socket being dumped, `sock`.
Result<NsQueues*> Find(DumpContext& ctx, int sock) {
  sys::UniqueFd netns = STASIS_TRY(NetnsOf(sock));
  uint64_t ino = STASIS_TRY(Inode(netns.get()));
  Queues& queues = ctx.State<Queues>();
  auto found = queues.by_netns.find(ino);
  if (found != queues.by_netns.end()) return &found->second;
  NsQueues fresh;
  NsQueues* q = &fresh;
  sys::UniqueFd nl = STASIS_TRY(DiagSocketIn(netns.get()));
  STASIS_TRY(DiagFamily(nl, AF_INET, &q->diag));
  STASIS_TRY(DiagFamily(nl, AF_INET6, &q->diag));
  for (const FdDumpInput* in : ctx.inputs) {
    if (!IsTcp(*in)) continue;
    sys::UniqueFd their_ns = STASIS_TRY(NetnsOf(in->local.get()));
    if (STASIS_TRY(Inode(their_ns.get())) != ino) continue;
    TreeSock t{in, STASIS_TRY(TcpState(in->local.get())), "", "", {}, {}};
    t.local = STASIS_TRY(Name(in->local.get(), false));
    t.local_ep = FromSockaddr(t.local);
    Result<std::string> peer = Name(in->local.get(), true);
    if (peer.ok()) {
      t.peer = peer.value();
      t.peer_ep = FromSockaddr(t.peer);
    }
    q->tree.push_back(std::move(t));
  }
  return &(queues.by_netns[ino] = std::move(fresh));
}

// A queued (not accepted) server end: no inode, since no file holds it.
bool Queued(const DiagSock& d) {
  return d.inode == 0 &&
         (d.state == TCP_ESTABLISHED || d.state == TCP_CLOSE_WAIT || d.state == TCP_SYN_RECV);
}

const TreeSock* ClientOf(const NsQueues& q, const DiagSock& child) {
  for (const TreeSock& t : q.tree) {
    if (t.state == TCP_ESTABLISHED && t.local_ep == child.dst && t.peer_ep == child.src) return &t;
  }
  return nullptr;
}

// --- the late step --------------------------------------------------------------

struct Expected {
  Endpoint client_local, client_peer;
  std::string local, peer;  // the client's sockaddrs, as its File has them
};

Status PeekReceiveQueue(int fd, image::TcpPendingConnection* c) {
  int inq = 0;
  if (ioctl(fd, SIOCINQ, &inq) < 0) return Error::Errno("SIOCINQ");
  STASIS_TRY(sys::SetIntOpt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE"));
  std::string data(static_cast<size_t>(inq), '\0');
  if (inq > 0) {
    ssize_t n = recv(fd, data.data(), data.size(), MSG_PEEK | MSG_DONTWAIT);
    if (n != inq) return Error::Errno(fmt::format("peek {} queued bytes", inq));
  }
  c->set_data(std::move(data));
  c->set_recv_seq(static_cast<uint32_t>(
      STASIS_TRY(sys::GetIntOpt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ(recv)"))));
  return Ok();
}

Status ReadQueue(int listener, const std::string& listener_addr,
                 const std::vector<Expected>& expected, image::TcpPendingQueue* out) {
  out->set_listener(listener_addr);
  for (size_t i = 0; i < expected.size(); ++i) {
    sys::UniqueFd child(accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!child.valid()) {
      return Error::Errno(fmt::format("accept connection {} of {}", i + 1, expected.size()));
    }
    // Closed in repair mode, it leaves without a FIN or an RST.
    STASIS_TRY(sys::SetIntOpt(child.get(), IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON, "TCP_REPAIR"));
    Endpoint from = FromSockaddr(STASIS_TRY(Name(child.get(), true)));
    Endpoint to = FromSockaddr(STASIS_TRY(Name(child.get(), false)));
    const Expected* e = nullptr;
    for (const Expected& x : expected) {
      if (x.client_local == from && x.client_peer == to) e = &x;
    }
    if (e == nullptr) {
      return Error(ErrorCode::kFailed,
                   fmt::format("accepted a connection from {}, which the dump did not find queued",
                               Show(from)));
    }
    image::TcpPendingConnection* c = out->add_connections();
    c->set_client_local(e->local);
    c->set_client_peer(e->peer);
    STASIS_TRY_CTX(PeekReceiveQueue(child.get(), c), "from " + Show(from));
  }
  return Ok();
}

// --- restore --------------------------------------------------------------------

Result<uint32_t> AcceptQueueLength(int listener) {
  tcp_info info = {};
  socklen_t len = sizeof info;
  if (getsockopt(listener, IPPROTO_TCP, TCP_INFO, &info, &len) < 0) {
    return Error::Errno("TCP_INFO of the listener");
  }
  return info.tcpi_unacked;
}

Status WaitFor(int fd, short events, const char* what) {
  pollfd p = {fd, events, 0};
  int r = poll(&p, 1, static_cast<int>(std::chrono::milliseconds(kConnectTimeout).count()));
  if (r < 0) return Error::Errno(what);
  if (r == 0) return Error(ErrorCode::kFailed, fmt::format("{}: timed out", what));
  return Ok();
}

Status Connect(int fd, const std::string& to) {
  if (connect(fd, reinterpret_cast<const sockaddr*>(to.data()), to.size()) == 0) return Ok();
  if (errno != EINPROGRESS) return Error::Errno("connect to " + Show(FromSockaddr(to)));
  STASIS_TRY(WaitFor(fd, POLLOUT, "connect"));
  int err = STASIS_TRY(sys::GetIntOpt(fd, SOL_SOCKET, SO_ERROR, "SO_ERROR"));
  if (err != 0) return Error::FromErrno("connect to " + Show(FromSockaddr(to)), err);
  return Ok();
}

// Until the listener's queue holds `want` (the handshake's last ACK is
// handled in softirq, maybe after connect() returned).
Status WaitQueued(int listener, uint32_t want) {
  auto deadline = std::chrono::steady_clock::now() + kConnectTimeout;
  while (STASIS_TRY(AcceptQueueLength(listener)) < want) {
    if (std::chrono::steady_clock::now() > deadline) {
      return Error(ErrorCode::kFailed, "the connection did not reach the listener's queue");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return Ok();
}

Status SendAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = send(fd, data.data() + done, data.size() - done, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      STASIS_TRY(WaitFor(fd, POLLOUT, "send queued data again"));
      continue;
    }
    if (n < 0) return Error::Errno(fmt::format("send {} queued bytes again", data.size() - done));
    done += static_cast<size_t>(n);
  }
  return Ok();
}

Status Reconnect(const LateRestore& ctx, int listener, uint32_t want,
                 const image::TcpPendingConnection& c) {
  image::TcpSocketState client;
  auto [file, fd] = ctx.Find("tcp", [&](const image::File& f) {
    return f.state().UnpackTo(&client) && client.waits_in_accept_queue() &&
           client.local() == c.client_local();
  });
  if (fd < 0) return Error::Corrupt("no File restored for the client");
  // The client's send queue starts at its snd_una; what the server end had
  // received up to rcv_nxt may overlap its head (not acknowledged yet).
  const std::string& sq = client.send_queue();
  uint32_t snd_una = client.send_seq() - static_cast<uint32_t>(sq.size());
  uint32_t overlap = c.recv_seq() - snd_una;
  if (overlap > sq.size() || overlap > c.data().size()) {
    return Error::Corrupt(fmt::format(
        "the server end received up to sequence {}, the client's send queue starts at {} and "
        "holds {} bytes",
        c.recv_seq(), snd_una, sq.size()));
  }
  // Raise the send buffer for the data, so it can be sent before the
  // program runs; SO_SNDBUFFORCE doubles what it is given.
  int sndbuf = STASIS_TRY(sys::GetIntOpt(fd, SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF"));
  size_t total = c.data().size() + sq.size() - overlap;
  STASIS_TRY(sys::SetIntOpt(fd, SOL_SOCKET, SO_SNDBUFFORCE,
                            static_cast<int>(sndbuf / 2 + total + 65536), "SO_SNDBUFFORCE"));
  STASIS_TRY(Connect(fd, c.client_peer()));
  STASIS_TRY(WaitQueued(listener, want));
  // The stream as the server end would have read it: what it had received,
  // then what the client had sent past that (unacknowledged or unsent).
  STASIS_TRY(SendAll(fd, c.data()));
  STASIS_TRY(SendAll(fd, sq.substr(overlap)));
  return sys::SetIntOpt(fd, SOL_SOCKET, SO_SNDBUFFORCE, sndbuf / 2, "SO_SNDBUFFORCE");
}

// The connections queued on the listener bound to `self`, each with its
// client among the tree's sockets; refuses what cannot be carried.
Result<std::vector<Expected>> MatchQueue(const NsQueues& q, const Endpoint& self,
                                         const std::string& what) {
  std::vector<Expected> expected;
  for (const DiagSock& d : q.diag) {
    if (!Queued(d) || ListenerFor(q.diag, d.src) != self) continue;
    std::string peer = Show(d.dst);
    if (d.state == TCP_SYN_RECV) {
      return Error::Unsupported(fmt::format(
          "{}: a connection from {} is still in its handshake (SYN_RECV, a request socket); not "
          "supported",
          what, peer));
    }
    if (d.state == TCP_CLOSE_WAIT) {
      return Error::Unsupported(fmt::format(
          "{}: a connection from {} waiting in its accept queue was already closed by the client "
          "(CLOSE_WAIT); not supported",
          what, peer));
    }
    const TreeSock* client = ClientOf(q, d);
    if (client == nullptr) {
      return Error::Unsupported(fmt::format(
          "{}: a connection from {} waits in its accept queue and its client is outside the "
          "dumped tree; only accept() reaches it, and a connection rebuilt at restore cannot be "
          "put back into an accept queue without its client",
          what, peer));
    }
    expected.push_back({client->local_ep, client->peer_ep, client->local, client->peer});
  }
  return expected;
}

}  // namespace

Status DumpListener(DumpContext& ctx, const FdDumpInput& in, const std::string& local,
                    uint32_t queued) {
  NsQueues* q = STASIS_TRY(Find(ctx, in.local.get()));
  Endpoint self = FromSockaddr(local);
  std::string what =
      fmt::format("{} (TCP listener {})", DescribeFd(in.pid, in.fd, in.link), Show(self));
  bool handshakes = false;
  for (const DiagSock& d : q->diag) {
    handshakes =
        handshakes || (Queued(d) && d.state == TCP_SYN_RECV && ListenerFor(q->diag, d.src) == self);
  }
  if (queued == 0 && !handshakes) return Ok();
  int listeners = 0;
  for (const DiagSock& d : q->diag) {
    listeners += d.state == TCP_LISTEN && d.src == self;
  }
  if (listeners > 1) {
    return Error::Unsupported(fmt::format(
        "{}: {} connections wait in its accept queue and another listener shares its port "
        "(SO_REUSEPORT): which queue holds which connection is not known",
        what, queued));
  }
  std::vector<Expected> expected = STASIS_TRY(MatchQueue(*q, self, what));
  if (expected.size() != queued) {
    return Error::Unsupported(
        fmt::format("{}: its accept queue holds {} connections, sock_diag shows {}", what, queued,
                    expected.size()));
  }
  auto dup = std::make_shared<sys::UniqueFd>(fcntl(in.local.get(), F_DUPFD_CLOEXEC, 0));
  if (!dup->valid()) return Error::Errno(what + ": dup");
  LateStep step;
  step.what = what;
  step.why = fmt::format("{} TCP connection(s) waiting in its accept queue", queued);
  step.run = [dup, local, expected]() -> Result<image::LateRecord> {
    image::TcpPendingQueue queue;
    STASIS_TRY(ReadQueue(dup->get(), local, expected, &queue));
    image::LateRecord record;
    record.set_kind("tcp");
    record.mutable_state()->PackFrom(queue);
    return record;
  };
  ctx.late.push_back(std::move(step));
  return Ok();
}

Result<bool> WaitsInAcceptQueue(DumpContext& ctx, const FdDumpInput& in, const std::string& local,
                                const std::string& peer) {
  NsQueues* q = STASIS_TRY(Find(ctx, in.local.get()));
  Endpoint self = FromSockaddr(local), other = FromSockaddr(peer);
  for (const DiagSock& d : q->diag) {
    if (!Queued(d) || d.src != other || d.dst != self) continue;
    for (const TreeSock& l : q->tree) {
      if (l.state != TCP_LISTEN || ListenerFor(q->diag, other) != l.local_ep) continue;
      if (d.state != TCP_ESTABLISHED) {
        return Error::Unsupported(fmt::format(
            "its connection to {} is not accepted yet and the listener's end is in state {} (a "
            "handshake in progress or a client that closed); not supported",
            Show(other), d.state == TCP_SYN_RECV ? "SYN_RECV" : "CLOSE_WAIT"));
      }
      // The server end has no fd to send with: nothing can be unread here.
      int inq = 0;
      if (ioctl(in.local.get(), SIOCINQ, &inq) < 0) return Error::Errno("SIOCINQ");
      if (inq != 0) {
        return Error(ErrorCode::kFailed,
                     fmt::format("{} unread bytes from a connection not accepted yet", inq));
      }
      return true;
    }
  }
  return false;
}

Status ApplyLate(const LateRestore& ctx, const image::LateRecord& record) {
  image::TcpPendingQueue queue;
  if (!record.state().UnpackTo(&queue)) return Error::Corrupt("TCP accept queue does not parse");
  std::string what = "TCP listener " + Show(FromSockaddr(queue.listener()));
  auto [file, listener] = ctx.Find("tcp", [&](const image::File& f) {
    image::TcpSocketState s;
    return f.state().UnpackTo(&s) && s.state() == TCP_LISTEN && s.local() == queue.listener();
  });
  if (listener < 0) return Error::Corrupt(what + ": no File restored for it");
  uint32_t queued = STASIS_TRY_CTX(AcceptQueueLength(listener), what);
  for (const image::TcpPendingConnection& c : queue.connections()) {
    STASIS_TRY_CTX(
        Reconnect(ctx, listener, ++queued, c),
        fmt::format("{}: the connection from {}", what, Show(FromSockaddr(c.client_local()))));
  }
  return Ok();
}

}  // namespace stasis::kinds::tcp_pending
