// Restore of the unix socket graph, all sockets at once, in the order the
// kernel needs:
//   1. stream and seqpacket connections. Unnamed ends: socketpair(). An
//      accepted end is named after its listener without binding (the kernel
//      copies the listener's address on connect), so it is made the same way:
//      a stand-in listener bound to that name for a moment, a connect, an
//      accept. This runs before any socket binds its own name, which the
//      stand-in needs free. A peer that was closed gets a stand-in peer,
//      closed once the queue is refilled.
//   2. datagram socketpairs (a pair with an unnamed end), the other sockets.
//   3. own names: kept names first, then names whose file was deleted (bound
//      and unlinked at once; they stay reachable through their O_PATH fd).
//   4. listen() with the dumped backlog, then the clients waiting in it
//      connect, in accept order.
//   5. receive queues, sent again by the peer (or stand-in). Datagrams:
//      messages from others first, then connect() (a connected datagram
//      socket accepts only its peer's), then its peer's.
//   6. stand-ins closed, then shutdown().
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <set>

#include "kinds/unix_socket_internal.h"

namespace stasis::kinds::unix_socket {
namespace {

using Node = image::UnixSocketNode;

constexpr uint64_t kPerMessageOverhead = 1024;  // skb truesize beyond the data

Result<sys::UniqueFd> NewSocket(int type) {
  sys::UniqueFd fd(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Error::Errno(fmt::format("socket(AF_UNIX, {})", type));
  return fd;
}

Status ConnectTo(int fd, const Target& target, const std::string& what) {
  sockaddr_un sa;
  socklen_t len = STASIS_TRY(target.Address(&sa));
  // Non-blocking: a full backlog must fail, not hang the restore.
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
    return Error::Errno(what + ": F_SETFL");
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), len) < 0) return Error::Errno(what);
  return Ok();
}

class Builder {
 public:
  explicit Builder(const image::UnixSocketGraph& graph) : graph_(graph) {
    for (const Node& n : graph.nodes()) {
      nodes_[n.ino()] = &n;
      for (uint64_t c : n.pending()) waiting_.insert(c);
    }
  }

  Status Run(Sockets* out) {
    for (const Node& n : graph_.nodes()) {
      if (n.type() != SOCK_DGRAM) STASIS_TRY_CTX(StreamConnection(n), DescribeNode(n));
    }
    for (const Node& n : graph_.nodes()) {
      if (n.type() == SOCK_DGRAM) STASIS_TRY_CTX(DatagramPair(n), DescribeNode(n));
    }
    for (const Node& n : graph_.nodes()) {
      if (!fds_.contains(n.ino())) fds_[n.ino()] = STASIS_TRY(NewSocket(n.type()));
    }
    for (bool deleted : {false, true}) {
      for (const Node& n : graph_.nodes()) {
        if (n.name().deleted() == deleted) STASIS_TRY_CTX(BindOwn(n), DescribeNode(n));
      }
    }
    for (const Node& n : graph_.nodes()) STASIS_TRY_CTX(Listen(n), DescribeNode(n));
    for (const Node& n : graph_.nodes()) {
      STASIS_TRY_CTX(n.type() == SOCK_DGRAM ? FillDatagram(n) : FillStream(n), DescribeNode(n));
    }
    stand_ins_.clear();
    senders_.clear();
    for (const Node& n : graph_.nodes()) STASIS_TRY_CTX(Shutdown(n), DescribeNode(n));
    out->by_ino.merge(fds_);
    return Ok();
  }

 private:
  const Node& At(uint64_t ino) const { return *nodes_.at(ino); }
  int Fd(uint64_t ino) const { return fds_.at(ino).get(); }
  // How a named node is reached (it is bound by then).
  Result<const Target*> TargetOf(const Node& n) const {
    auto it = targets_.find(n.ino());
    if (it == targets_.end()) {
      return Error::Corrupt(
          fmt::format("{} must be reached by its name but has none", DescribeNode(n)));
    }
    return &it->second;
  }

  Status BindOwn(const Node& n) {
    if (n.name().name().empty() || n.name_shared() || targets_.contains(n.ino())) return Ok();
    targets_[n.ino()] = STASIS_TRY(BindName(Fd(n.ino()), n.name(), !n.name().deleted()));
    return Ok();
  }

  // A connected pair through a stand-in listener named `name`: the client
  // connects, the accepted socket carries the name. Returns the accepted one.
  Result<sys::UniqueFd> ViaStandIn(int type, const std::string& name, int client) {
    sys::UniqueFd listener = STASIS_TRY(NewSocket(type));
    Target target = STASIS_TRY(BindStandIn(listener.get(), name));
    if (listen(listener.get(), 1) < 0) return Error::Errno("listen on a stand-in listener");
    STASIS_TRY(ConnectTo(client, target, "connect to a stand-in listener " + ShowName(name)));
    sys::UniqueFd accepted(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!accepted.valid()) return Error::Errno("accept from a stand-in listener");
    return accepted;
  }

  Status SocketPair(int type, sys::UniqueFd* a, sys::UniqueFd* b) {
    int sv[2];
    if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) < 0) return Error::Errno("socketpair");
    a->reset(sv[0]);
    b->reset(sv[1]);
    return Ok();
  }

  Status StreamConnection(const Node& n) {
    if (n.state() != Node::CONNECTED || waiting_.contains(n.ino()) || fds_.contains(n.ino())) {
      return Ok();
    }
    if (n.peer() != 0) {
      const Node& p = At(n.peer());
      if (!n.name_shared() && !p.name_shared()) {
        return SocketPair(n.type(), &fds_[n.ino()], &fds_[p.ino()]);
      }
      const Node& accepted = n.name_shared() ? n : p;
      const Node& client = n.name_shared() ? p : n;
      fds_[client.ino()] = STASIS_TRY(NewSocket(n.type()));
      STASIS_TRY(BindOwn(client));
      fds_[accepted.ino()] =
          STASIS_TRY(ViaStandIn(n.type(), accepted.name().name(), Fd(client.ino())));
      return Ok();
    }
    if (!n.peer_gone()) return Error::Corrupt("connected, with no peer and not in a backlog");
    sys::UniqueFd& stand_in = stand_ins_[n.ino()];
    // A peer outside the tree that still holds an abstract name: the
    // stand-in cannot have it, so it is unnamed (getpeername says so).
    bool peer_named = !n.peer_name().name().empty() && !OutsideHoldsName(n);
    if (n.name_shared()) {
      stand_in = STASIS_TRY(NewSocket(n.type()));
      if (peer_named) STASIS_TRY(BindStandIn(stand_in.get(), n.peer_name().name()));
      fds_[n.ino()] = STASIS_TRY(ViaStandIn(n.type(), n.name().name(), stand_in.get()));
    } else if (peer_named) {
      fds_[n.ino()] = STASIS_TRY(NewSocket(n.type()));
      STASIS_TRY(BindOwn(n));
      stand_in = STASIS_TRY(ViaStandIn(n.type(), n.peer_name().name(), Fd(n.ino())));
    } else {
      STASIS_TRY(SocketPair(n.type(), &fds_[n.ino()], &stand_in));
    }
    return Ok();
  }

  // Datagram sockets connected to an unnamed one come from socketpair();
  // a closed peer gets a stand-in (bound to its name, when it had one).
  Status DatagramPair(const Node& n) {
    if (fds_.contains(n.ino())) return Ok();
    if (n.peer() != 0 && n.peer() != n.ino()) {
      const Node& p = At(n.peer());
      bool unnamed_end = n.name().name().empty() || p.name().name().empty();
      if (p.peer() == n.ino() && unnamed_end) {
        paired_.insert(n.ino());
        paired_.insert(p.ino());
        return SocketPair(SOCK_DGRAM, &fds_[n.ino()], &fds_[p.ino()]);
      }
      return Ok();
    }
    if (!n.peer_gone()) return Ok();
    sys::UniqueFd& stand_in = stand_ins_[n.ino()];
    if (n.peer_name().name().empty() || OutsideHoldsName(n)) {
      paired_.insert(n.ino());
      return SocketPair(SOCK_DGRAM, &fds_[n.ino()], &stand_in);
    }
    stand_in = STASIS_TRY(NewSocket(SOCK_DGRAM));
    stand_in_targets_[n.ino()] = STASIS_TRY(BindStandIn(stand_in.get(), n.peer_name().name()));
    return Ok();
  }

  // The peer was outside the tree and its abstract name is still taken.
  static bool OutsideHoldsName(const Node& n) {
    return n.peer_outside() && AbstractNameTaken(n.peer_name().name(), n.type());
  }

  Status Listen(const Node& n) {
    if (n.state() != Node::LISTENING) return Ok();
    if (listen(Fd(n.ino()), static_cast<int>(n.backlog())) < 0) {
      return Error::Errno(fmt::format("listen({})", n.backlog()));
    }
    for (uint64_t client : n.pending()) {
      STASIS_TRY(BindOwn(At(client)));
      const Target* target = STASIS_TRY(TargetOf(n));
      STASIS_TRY_CTX(ConnectTo(Fd(client), *target, "connect into the backlog again"),
                     DescribeNode(At(client)));
    }
    return Ok();
  }

  // The peer end a node's data came from: its peer, or the stand-in for a
  // closed one.
  int PeerFd(const Node& n) const {
    if (n.peer() != 0) return Fd(n.peer());
    auto it = stand_ins_.find(n.ino());
    return it != stand_ins_.end() ? it->second.get() : -1;
  }

  Status Send(int from, const Target* to, const Node& n, const image::UnixMessage& msg) {
    STASIS_TRY(RaiseSndbuf(from, msg.data().size() + kPerMessageOverhead));
    return SendMessage(from, to, n.type(), msg, DescribeNode(n));
  }

  Status FillStream(const Node& n) {
    if (n.peer_reset()) {
      // Left unread in the stand-in, it makes the stand-in's close a reset.
      if (send(Fd(n.ino()), "", 1, MSG_DONTWAIT | MSG_NOSIGNAL) != 1) {
        return Error::Errno("send to the stand-in of a peer that resets");
      }
    }
    if (n.queue_size() == 0) return Ok();
    int from = PeerFd(n);
    if (from < 0) return Error::Corrupt("queued data but no peer to send it");
    for (const image::UnixMessage& msg : n.queue()) STASIS_TRY(Send(from, nullptr, n, msg));
    return Ok();
  }

  // Who sends a datagram from `name`: the node bound to it, else a
  // temporary socket with that name (its sender is gone or outside).
  Result<int> SenderNamed(const std::string& name) {
    for (const Node& n : graph_.nodes()) {
      if (n.type() == SOCK_DGRAM && !name.empty() && n.name().name() == name) return Fd(n.ino());
    }
    sys::UniqueFd& fd = senders_[name];
    if (!fd.valid()) {
      fd = STASIS_TRY(NewSocket(SOCK_DGRAM));
      if (!name.empty()) STASIS_TRY(BindStandIn(fd.get(), name));
    }
    return fd.get();
  }

  Status FillDatagram(const Node& n) {
    if (paired_.contains(n.ino())) {
      for (const image::UnixMessage& msg : n.queue()) STASIS_TRY(Send(PeerFd(n), nullptr, n, msg));
      return Ok();
    }
    const Target* peer = nullptr;
    std::string peer_name;
    if (n.peer() != 0) {
      peer = STASIS_TRY(TargetOf(At(n.peer())));
      peer_name = At(n.peer()).name().name();
    } else if (n.peer_gone()) {
      peer = &stand_in_targets_.at(n.ino());
      peer_name = n.peer_name().name();
    }
    // Messages up to the last one from another sender came before connect().
    int split = n.queue_size();
    if (peer != nullptr) {
      while (split > 0 && n.queue(split - 1).sender() == peer_name) --split;
    }
    const Target* self = n.queue_size() > 0 ? STASIS_TRY(TargetOf(n)) : nullptr;
    for (int i = 0; i < split; ++i) {
      STASIS_TRY(Send(STASIS_TRY(SenderNamed(n.queue(i).sender())), self, n, n.queue(i)));
    }
    if (peer == nullptr) return Ok();
    STASIS_TRY(ConnectTo(Fd(n.ino()), *peer, "connect to " + ShowName(peer_name)));
    for (int i = split; i < n.queue_size(); ++i) STASIS_TRY(Send(PeerFd(n), self, n, n.queue(i)));
    return Ok();
  }

  Status Shutdown(const Node& n) {
    static constexpr int kHow[] = {-1, SHUT_RD, SHUT_WR, SHUT_RDWR};
    // A waiting client with data shuts down after sending it (late record).
    if (n.shutdown() == 0 || n.shutdown() > 3 || n.late_queue()) return Ok();
    if (shutdown(Fd(n.ino()), kHow[n.shutdown()]) < 0) {
      return Error::Errno(fmt::format("shutdown({})", kHow[n.shutdown()]));
    }
    return Ok();
  }

  const image::UnixSocketGraph& graph_;
  std::map<uint64_t, const Node*> nodes_;
  std::set<uint64_t> waiting_;  // clients waiting in a backlog
  std::map<uint64_t, sys::UniqueFd> fds_;
  std::map<uint64_t, Target> targets_;            // named nodes, to connect and send to
  std::set<uint64_t> paired_;                     // datagram nodes made by socketpair()
  std::map<uint64_t, sys::UniqueFd> stand_ins_;   // closed peers, by the node they served
  std::map<uint64_t, Target> stand_in_targets_;   // datagrams: named closed peers
  std::map<std::string, sys::UniqueFd> senders_;  // datagrams from senders not in the graph
};

}  // namespace

Status ValidateGraph(const image::UnixSocketGraph& graph) {
  std::map<uint64_t, const Node*> nodes;
  for (const Node& n : graph.nodes()) {
    if (n.type() != SOCK_STREAM && n.type() != SOCK_DGRAM && n.type() != SOCK_SEQPACKET) {
      return Error::Corrupt(fmt::format("{}: socket type {}", DescribeNode(n), n.type()));
    }
    if (!nodes.emplace(n.ino(), &n).second) {
      return Error::Corrupt(fmt::format("socket:[{}] twice in the graph", n.ino()));
    }
  }
  auto check = [&](const Node& n, uint64_t other, const char* role) -> Status {
    auto it = nodes.find(other);
    if (it == nodes.end() || it->second->type() != n.type()) {
      return Error::Corrupt(fmt::format("{}: its {} socket:[{}] is not a node of its type",
                                        DescribeNode(n), role, other));
    }
    return Ok();
  };
  for (const Node& n : graph.nodes()) {
    if (n.peer() != 0) STASIS_TRY(check(n, n.peer(), "peer"));
    for (uint64_t c : n.pending()) STASIS_TRY(check(n, c, "waiting client"));
    if (n.name().name().size() > sizeof(sockaddr_un::sun_path) ||
        n.peer_name().name().size() > sizeof(sockaddr_un::sun_path)) {
      return Error::Corrupt(fmt::format("{}: name longer than sun_path", DescribeNode(n)));
    }
  }
  return Ok();
}

Status BuildGraph(const image::UnixSocketGraph& graph, Sockets* out) {
  STASIS_TRY(ValidateGraph(graph));
  return Builder(graph).Run(out);
}

}  // namespace stasis::kinds::unix_socket
