// Dump of every unix socket of the tree, as one graph: which are connected
// to which, the names, listeners with the connections waiting in their
// backlog, and receive queues. sock_diag says who is whose peer; the tree's
// fds (ctx.fd_index) say which sockets are ours. A socket tied to one outside
// the tree (its peer, a client waiting in its backlog, the listener it waits
// on) is refused, naming both, unless the dump runs with
// --external-unix=close (DumpPolicy): then a peer or listener outside is
// carried as a peer that closed (peer_gone, peer_outside), and clients from
// outside waiting in a listener's backlog as clients that closed.
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <set>

#include "kinds/unix_socket_internal.h"
#include "sys/pidfds.h"
#include "sys/proc.h"

namespace stasis::kinds::unix_socket {
namespace {

constexpr unsigned long kSiocUnixFile = 0x89E0;  // see unix_socket_names.cc
// The end of a refusal that --external-unix=close would lift.
constexpr std::string_view kCloseHint =
    " (stasis dump --external-unix=close carries it as if that peer had closed)";
// Every queue of the graph goes into one image record (64 MiB at most).
constexpr uint64_t kMaxQueuedBytes = 32 << 20;

using Node = image::UnixSocketNode;

struct Member {
  pid_t pid;
  int fd;
  sys::UniqueFd local;
  const DiagEntry* diag;
  Node* node;
};

// The first process (pid and comm) found holding socket:[ino], for messages
// about sockets outside the tree. Scans /proc: errors only.
std::string Holder(uint64_t ino) {
  std::string link = fmt::format("socket:[{}]", ino);
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return "";
  std::string found;
  while (dirent* d = readdir(proc)) {
    pid_t pid = atoi(d->d_name);
    if (pid <= 0) continue;
    Result<std::vector<int>> fds = sys::proc::ListFds(pid);
    if (!fds.ok()) continue;
    for (int fd : fds.value()) {
      Result<std::string> l = sys::proc::ReadLink(fmt::format("/proc/{}/fd/{}", pid, fd));
      if (!l.ok() || l.value() != link) continue;
      Result<std::string> comm = sys::proc::ReadFile(fmt::format("/proc/{}/comm", pid));
      std::string name = comm.ok() ? comm.value() : "";
      if (!name.empty() && name.back() == '\n') name.pop_back();
      found = fmt::format("held by pid {} ({}) fd {}", pid, name, fd);
      break;
    }
    if (!found.empty()) break;
  }
  closedir(proc);
  return found;
}

Status FillPathInfo(int fd, image::UnixAddress* addr, const std::string& what) {
  if (!addr->name().starts_with('/')) {
    return Error::Unsupported(
        fmt::format("{}: relative socket path {} (the directory it was bound "
                    "in is not known)",
                    what, ShowName(addr->name())));
  }
  sys::UniqueFd file(ioctl(fd, kSiocUnixFile));
  if (!file.valid()) return Error::Errno(what + ": SIOCUNIXFILE");
  std::string link = STASIS_TRY(sys::proc::ReadLink(fmt::format("/proc/self/fd/{}", file.get())));
  addr->set_deleted(link.ends_with(" (deleted)"));
  struct stat st;
  if (fstat(file.get(), &st) < 0) return Error::Errno(what + ": fstat socket file");
  addr->set_mode(st.st_mode & 07777);
  addr->set_uid(st.st_uid);
  addr->set_gid(st.st_gid);
  return Ok();
}

Result<Node::State> StateOf(const DiagEntry& e, const std::string& what) {
  switch (e.state) {
    case TCP_LISTEN:
      return Node::LISTENING;
    case TCP_ESTABLISHED:
      return e.type == SOCK_DGRAM ? Node::UNCONNECTED : Node::CONNECTED;  // dgram: see ResolvePeer
    case TCP_CLOSE:
      return Node::UNCONNECTED;
    default:
      return Error::Unsupported(fmt::format("{}: socket state {}", what, e.state));
  }
}

class GraphDump {
 public:
  GraphDump(DumpContext& ctx, const FdDumpInput& in) : ctx_(ctx), in_(in) {}

  Status Run(image::UnixSocketGraph* graph) {
    graph_ = graph;
    table_ = STASIS_TRY(DumpDiagTable());
    STASIS_TRY(CollectMembers(graph));
    for (Member& m : members_) STASIS_TRY(Describe(m));
    STASIS_TRY(IndexBacklogs());
    for (Member& m : members_) STASIS_TRY(ResolvePeer(m));
    for (Member& m : members_) STASIS_TRY(ResolveSharedName(m));
    for (Member& m : members_) STASIS_TRY(CheckDatagram(m));
    STASIS_TRY(CheckSize());
    DumpState& dumped = ctx_.State<DumpState>();
    for (Member& m : members_) dumped.in_graph.insert(m.node->ino());
    return AddPending();
  }

 private:
  Result<sys::UniqueFd> Steal(pid_t pid, int fd) {
    if (pid == in_.pid && fd == in_.fd) {
      sys::UniqueFd dup(fcntl(in_.local.get(), F_DUPFD_CLOEXEC, 0));
      if (!dup.valid()) return Error::Errno("dup");
      return dup;
    }
    sys::UniqueFd& pidfd = pidfds_[pid];
    if (!pidfd.valid()) pidfd = STASIS_TRY(sys::PidfdOpen(pid));
    return sys::PidfdGetfd(pidfd.get(), pid, fd);
  }

  // The tree's unix sockets: sock_diag lists them (and only those of our
  // network namespace); the first fd met of each is stolen.
  Status CollectMembers(image::UnixSocketGraph* graph) {
    for (const FdIndexEntry& e : ctx_.fd_index) {
      uint64_t ino;
      if (!ParseSocketLink(e.link, &ino) || !table_.contains(ino) || index_.contains(ino)) continue;
      index_[ino] = members_.size();
      Member m{e.pid, e.fd, STASIS_TRY(Steal(e.pid, e.fd)), &table_.at(ino), graph->add_nodes()};
      m.node->set_ino(ino);
      m.node->set_pid(e.pid);
      m.node->set_fd(e.fd);
      members_.push_back(std::move(m));
    }
    return Ok();
  }

  Node* NodeOf(uint64_t ino) {
    auto it = index_.find(ino);
    return it == index_.end() ? nullptr : members_[it->second].node;
  }

  Status Describe(Member& m) {
    Node& n = *m.node;
    const DiagEntry& d = *m.diag;
    std::string what = DescribeFd(m.pid, m.fd, fmt::format("socket:[{}]", n.ino()));
    if (d.type != SOCK_STREAM && d.type != SOCK_DGRAM && d.type != SOCK_SEQPACKET) {
      return Error::Unsupported(fmt::format("{}: unix socket type {}", what, d.type));
    }
    n.set_type(d.type);
    n.set_state(STASIS_TRY(StateOf(d, what)));
    std::string name = STASIS_TRY_CTX(SockName(m.local.get(), false), what);
    if (!name.empty()) {
      n.mutable_name()->set_name(name);
      if (!IsAbstract(name)) STASIS_TRY(FillPathInfo(m.local.get(), n.mutable_name(), what));
    }
    what = DescribeNode(n);
    n.set_peer(d.peer);
    n.set_shutdown(d.shutdown);
    if (n.state() == Node::LISTENING) {
      n.set_backlog(d.wqueue);
      for (uint64_t c : d.icons) n.add_pending(c);
      return Ok();
    }
    // An unconnected stream or seqpacket socket has no queue (and reading
    // it fails: EINVAL, ENOTCONN).
    if (n.type() != SOCK_DGRAM && n.state() == Node::UNCONNECTED) return Ok();
    for (image::UnixMessage& msg : STASIS_TRY(PeekQueue(m.local.get(), n.type(), what))) {
      *n.add_queue() = std::move(msg);
    }
    return Ok();
  }

  // "socket:[7] (@name, held by pid 4 (comm) fd 5)" for a socket outside
  // the tree.
  std::string Outside(uint64_t ino) {
    std::vector<std::string> parts;
    auto it = table_.find(ino);
    if (it != table_.end() && !it->second.name.empty()) parts.push_back(ShowName(it->second.name));
    std::string holder = Holder(ino);
    if (!holder.empty()) parts.push_back(holder);
    std::string out = fmt::format("socket:[{}]", ino);
    if (!parts.empty()) out += fmt::format(" ({})", fmt::join(parts, ", "));
    return out;
  }

  // Which listener each client waiting in a backlog waits on; refuses
  // backlogs with clients outside the tree (or, --external-unix=close,
  // carries them as clients that closed).
  Status IndexBacklogs() {
    for (const auto& [ino, e] : table_) {
      if (e.state != TCP_LISTEN) continue;
      Node* listener = NodeOf(ino);
      if (listener == nullptr) {
        for (uint64_t client : e.icons) {
          if (NodeOf(client) != nullptr) waiting_outside_[client] = ino;
        }
        continue;
      }
      for (int i = 0; i < listener->pending_size(); ++i) {
        uint64_t client = listener->pending(i);
        if (client != 0 && NodeOf(client) != nullptr) {
          waiting_on_[client] = ino;
          continue;
        }
        // A client closed already may have left data no one can see.
        if (!ctx_.policy.external_unix_close || client == 0) {
          return Error::Unsupported(fmt::format(
              "{}: a connection waiting in its backlog comes from {}, which is outside the dumped "
              "tree{}",
              DescribeNode(*listener),
              client == 0 ? "a client that was closed since (what it sent cannot be seen)"
                          : Outside(client),
              client == 0 ? "" : kCloseHint));
        }
        listener->set_pending(i, STASIS_TRY(ClientGone(*listener, client)));
      }
    }
    return Ok();
  }

  // --external-unix=close: a client outside the tree waiting in the
  // backlog of a listener of the tree. It comes back as a
  // client that has closed: accept() returns its connection, which reads
  // EOF. A node of its own stands for it (no File takes its socket, so the
  // restore closes it). Data it sent is only readable after accept():
  // refused, as for clients in the tree.
  Result<uint64_t> ClientGone(Node& listener, uint64_t client) {
    auto it = table_.find(client);
    if (it != table_.end() && it->second.wqueue != 0) {
      return Error::Unsupported(fmt::format(
          "{}: {}, outside the dumped tree, sent data ({} bytes with overhead) on a connection "
          "still waiting in its backlog; that data cannot be read without accept()",
          DescribeNode(listener), Outside(client), it->second.wqueue));
    }
    // Inodes are 32-bit on sockfs: this one cannot clash with a real socket.
    uint64_t id = (uint64_t{1} << 63) | ++gone_clients_;
    Node* gone = graph_->add_nodes();
    gone->set_ino(id);
    gone->set_pid(0);
    gone->set_fd(-1);
    gone->set_type(listener.type());
    gone->set_state(Node::CONNECTED);
    gone->set_peer_outside(true);
    return id;
  }

  Status ResolvePeer(Member& m) {
    Node& n = *m.node;
    if (n.state() == Node::LISTENING) return Ok();
    if (n.peer() != 0) {
      Node* peer = NodeOf(n.peer());
      if (peer == nullptr) {
        if (ctx_.policy.external_unix_close) return PeerOutside(m);
        return Error::Unsupported(fmt::format("{}: its peer {} is outside the dumped tree{}",
                                              DescribeNode(n), Outside(n.peer()), kCloseHint));
      }
      if (peer->type() != n.type() || (n.type() != SOCK_DGRAM && peer->peer() != n.ino())) {
        return Error(ErrorCode::kFailed, fmt::format("{}: sock_diag shows an inconsistent peer {}",
                                                     DescribeNode(n), DescribeNode(*peer)));
      }
      n.set_state(Node::CONNECTED);
      return Ok();
    }
    if (n.type() != SOCK_DGRAM && n.state() == Node::CONNECTED) {
      if (waiting_on_.contains(n.ino())) return CheckWaitingClient(m);
      if (waiting_outside_.contains(n.ino())) {
        if (ctx_.policy.external_unix_close) return PeerOutside(m);
        return Error::Unsupported(fmt::format(
            "{}: its connection waits in the backlog of {}, which is outside the dumped tree{}",
            DescribeNode(n), Outside(waiting_outside_.at(n.ino())), kCloseHint));
      }
    }
    // A peer that was closed reads as inode 0 (the kernel keeps it orphaned
    // while we point to it) and getpeername still names it.
    Result<std::string> peer_name = SockName(m.local.get(), true);
    if (!peer_name.ok() && peer_name.error().errnum() == ENOTCONN) return Ok();
    std::string name = STASIS_TRY_CTX(std::move(peer_name), DescribeNode(n));
    if (!name.empty() && !IsAbstract(name) && !name.starts_with('/')) {
      return Error::Unsupported(fmt::format("{}: its closed peer had the relative path {}",
                                            DescribeNode(n), ShowName(name)));
    }
    n.set_state(Node::CONNECTED);
    n.set_peer_gone(true);
    n.mutable_peer_name()->set_name(name);
    return Ok();
  }

  // --external-unix=close: the peer (or the listener whose backlog holds
  // this connection) is outside; carried as a peer that closed, named as
  // getpeername names it now. Data the tree sent it is lost with it, as
  // when a peer closes; what it sent the tree is in n's queue.
  Status PeerOutside(Member& m) {
    Node& n = *m.node;
    std::string name = STASIS_TRY_CTX(SockName(m.local.get(), true), DescribeNode(n));
    if (!name.empty() && !IsAbstract(name) && !name.starts_with('/')) {
      return Error::Unsupported(
          fmt::format("{}: its peer outside the tree has the relative path {}", DescribeNode(n),
                      ShowName(name)));
    }
    bool waiting = waiting_outside_.contains(n.ino());
    auto peer = table_.find(n.peer());
    bool unread = n.peer() != 0 && peer != table_.end() && peer->second.rqueue != 0;
    n.set_peer_reset(n.type() != SOCK_DGRAM && (waiting || unread));
    n.set_peer(0);
    n.set_state(Node::CONNECTED);
    n.set_peer_gone(true);
    n.set_peer_outside(true);
    n.mutable_peer_name()->set_name(name);
    return Ok();
  }

  // What a client sent on a connection that is not accepted yet sits in the
  // queue of a socket no fd reaches: only accept() reads it, at the point of
  // no return (unix_socket_pending.cc). Its size counts toward the cap.
  Status CheckWaitingClient(const Member& m) {
    if (m.diag->wqueue == 0) return Ok();
    m.node->set_late_queue(true);
    late_bytes_ += m.diag->wqueue;
    return Ok();
  }

  // One late step for the listeners whose backlog holds a client with data.
  Status AddPending() {
    std::vector<PendingListener> listeners;
    for (Member& m : members_) {
      const Node& n = *m.node;
      if (n.state() != Node::LISTENING) continue;
      PendingListener l{n.ino(), n.type(), {}, {}, DescribeNode(n)};
      bool data = false, outside = false;
      for (uint64_t c : n.pending()) {
        const Node* client = NodeOf(c);
        l.clients.push_back(client);
        if (client == nullptr) {
          outside = true;  // carried as a peer that closed (--external-unix=close)
        } else {
          data = data || client->late_queue();
        }
      }
      if (!data) continue;
      if (outside) {
        return Error::Unsupported(fmt::format(
            "{}: its backlog holds a client outside the dumped tree and a client of the tree "
            "that sent data; reading that data needs accept() in backlog order, not supported "
            "with an outside client in the same backlog",
            l.what));
      }
      STASIS_TRY(CheckNoFdsWaiting(m.pid, m.fd, l.what));
      l.fd = sys::UniqueFd(fcntl(m.local.get(), F_DUPFD_CLOEXEC, 0));
      if (!l.fd.valid()) return Error::Errno(DescribeNode(n) + ": dup");
      listeners.push_back(std::move(l));
    }
    AddPendingStep(ctx_, std::move(listeners));
    return Ok();
  }

  // A listening socket of n's type with this name. For a path, bound to
  // the same socket file as `holder`, the socket showing the name (an
  // accepted socket shows its listener's file), when there is one.
  const DiagEntry* ListenerNamed(const Node& n, const std::string& name, const DiagEntry* holder) {
    for (const auto& [ino, e] : table_) {
      if (e.state != TCP_LISTEN || e.type != n.type() || e.name != name) continue;
      if (!IsAbstract(name) && holder != nullptr && e.has_vfs && holder->has_vfs &&
          (e.vfs_ino != holder->vfs_ino || e.vfs_dev != holder->vfs_dev)) {
        continue;
      }
      return &e;
    }
    return nullptr;
  }

  // The restore recreates a listener's name on an accepted socket with a
  // stand-in listener, which needs the name free for a moment.
  Status CheckStandInFree(const Node& n, const DiagEntry* listener, const std::string& name) {
    if (listener == nullptr || NodeOf(listener->ino) != nullptr) return Ok();
    return Error::Unsupported(fmt::format(
        "{}: its restore needs a stand-in listener named {} for a moment (an accepted end is "
        "named after its listener), but {}, outside the dumped tree, holds that name",
        DescribeNode(n), ShowName(name), Outside(listener->ino)));
  }

  // Accepted sockets are named like their listener but did not bind: decide
  // which end of each connection that is (see name_shared).
  Status ResolveSharedName(Member& m) {
    Node& n = *m.node;
    if (n.type() == SOCK_DGRAM || n.state() != Node::CONNECTED || waiting_on_.contains(n.ino())) {
      return Ok();
    }
    const std::string& own = n.name().name();
    const std::string& other =
        n.peer_gone() ? n.peer_name().name() : NodeOf(n.peer())->name().name();
    const DiagEntry* other_holder = n.peer_gone() ? nullptr : &table_.at(n.peer());
    const DiagEntry* own_listener = own.empty() ? nullptr : ListenerNamed(n, own, m.diag);
    const DiagEntry* other_listener =
        other.empty() ? nullptr : ListenerNamed(n, other, other_holder);
    bool shared;
    if (own_listener != nullptr || other_listener != nullptr) {
      shared = own_listener != nullptr && other_listener == nullptr;
    } else if (!own.empty() && !other.empty()) {
      return Error::Unsupported(fmt::format(
          "{}: both ends of its connection are named ({} and {}) and no listener holds either "
          "name, so which end was accepted is unknown",
          DescribeNode(n), ShowName(own), ShowName(other)));
    } else {
      shared = !own.empty();
    }
    n.set_name_shared(shared);
    if (shared) return CheckStandInFree(n, own_listener, own);
    // A stand-in for a peer outside never takes its name (BindStandIn).
    if (n.peer_gone() && !n.peer_outside()) return CheckStandInFree(n, other_listener, other);
    return Ok();
  }

  // Datagram shapes the restore can rebuild: an unnamed socket is reached
  // only through its socketpair partner.
  Status CheckDatagram(const Member& m) {
    const Node& n = *m.node;
    if (n.type() != SOCK_DGRAM) return Ok();
    const Node* peer = n.peer() != 0 ? NodeOf(n.peer()) : nullptr;
    if (peer != nullptr && peer->name().name().empty() && peer->peer() != n.ino()) {
      return Error::Unsupported(
          fmt::format("{}: connected to the unnamed {}, which is now connected elsewhere",
                      DescribeNode(n), DescribeNode(*peer)));
    }
    bool pair = (peer != nullptr && peer->peer() == n.ino()) ||
                (n.peer_gone() && n.peer_name().name().empty());
    if (n.name().name().empty() && n.queue_size() > 0 && !pair) {
      return Error::Unsupported(fmt::format(
          "{}: an unnamed datagram socket with queued messages whose sender is no longer "
          "connected to it",
          DescribeNode(n)));
    }
    for (const image::UnixMessage& msg : n.queue()) {
      const std::string& s = msg.sender();
      if (!s.empty() && !IsAbstract(s) && !s.starts_with('/')) {
        return Error::Unsupported(fmt::format("{}: a queued message from the relative path {}",
                                              DescribeNode(n), ShowName(s)));
      }
    }
    return Ok();
  }

  Status CheckSize() {
    uint64_t total = late_bytes_;
    for (const Member& m : members_) {
      for (const image::UnixMessage& msg : m.node->queue()) total += msg.data().size();
    }
    if (total <= kMaxQueuedBytes) return Ok();
    return Error::Unsupported(fmt::format(
        "the tree's unix sockets hold {} bytes in their receive queues, more than the {} MiB "
        "carried",
        total, kMaxQueuedBytes >> 20));
  }

  DumpContext& ctx_;
  const FdDumpInput& in_;
  image::UnixSocketGraph* graph_ = nullptr;
  uint64_t gone_clients_ = 0;
  DiagTable table_;
  std::vector<Member> members_;
  std::map<uint64_t, size_t> index_;
  std::map<pid_t, sys::UniqueFd> pidfds_;
  std::map<uint64_t, uint64_t> waiting_on_;       // client -> listener, both in the tree
  std::map<uint64_t, uint64_t> waiting_outside_;  // client -> listener outside the tree
  uint64_t late_bytes_ = 0;                       // sent on waiting connections (with overhead)
};

}  // namespace

std::string DescribeNode(const Node& node) {
  std::string link = fmt::format("socket:[{}]", node.ino());
  if (!node.name().name().empty()) link += ", " + ShowName(node.name().name());
  return DescribeFd(node.pid(), node.fd(), link);
}

Status DumpGraph(DumpContext& ctx, const FdDumpInput& in, image::UnixSocketGraph* graph) {
  return GraphDump(ctx, in).Run(graph);
}

}  // namespace stasis::kinds::unix_socket
