// Data sent on unix connections still waiting in a listener's backlog.
//
// connect() makes the not yet accepted end (an "embryo" socket) at once, and
// what the client sends goes into the embryo's receive queue; no fd reaches
// it until accept(). So the dump accepts the waiting connections, on its own
// duplicate of the listener, only at its point of no return (a LateStep:
// the image is otherwise complete and the tree will be killed) and peeks
// their queues; everything else (clients in the tree, the sizes) was checked
// at dump time, fds in flight (SCM_RIGHTS) too, through the listener's
// fdinfo. What only the accepted socket shows is checked then: a pending
// MSG_OOB byte is refused there, and the connections taken are lost to the
// tree (the error says so).
//
// Restore: the graph build already connected each client into the restored
// listener's backlog, in accept order (unix_socket_build.cc). The late record
// is applied once the tree is built: each client sends its data again, with
// its boundaries and credentials, so the new embryo holds it before the
// program runs; the client's shutdown() comes after.
#include <fmt/format.h>
#include <sys/stat.h>

#include <cstdlib>

#include <memory>

#include "kinds/unix_socket.h"
#include "kinds/unix_socket_internal.h"
#include "sys/proc.h"

namespace stasis::kinds::unix_socket {
namespace {

using Node = image::UnixSocketNode;

constexpr uint64_t kPerMessageOverhead = 1024;  // skb truesize beyond the data

// What one listener's late step needs once the graph dump is gone.
struct Backlog {
  uint64_t ino;
  int type;
  sys::UniqueFd fd;
  std::vector<uint64_t> clients;
  std::vector<uint32_t> shutdown;
  std::string what;
};

Result<uint64_t> InodeOf(int fd) {
  struct stat st;
  if (fstat(fd, &st) < 0) return Error::Errno("fstat an accepted socket");
  return st.st_ino;
}

// Accepts the whole backlog (a later connection is reached only past the
// earlier ones) and reads each accepted end's queue.
Status ReadBacklog(const Backlog& b, image::UnixPendingData* out) {
  std::vector<sys::UniqueFd> accepted;
  for (size_t i = 0; i < b.clients.size(); ++i) {
    sys::UniqueFd fd(accept4(b.fd.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd.valid()) {
      return Error::Errno(
          fmt::format("accept connection {} of the {} waiting", i + 1, b.clients.size()));
    }
    accepted.push_back(std::move(fd));
  }
  DiagTable table = STASIS_TRY(DumpDiagTable());
  for (size_t i = 0; i < accepted.size(); ++i) {
    uint64_t ino = STASIS_TRY(InodeOf(accepted[i].get()));
    auto it = table.find(ino);
    if (it == table.end() || it->second.peer != b.clients[i]) {
      return Error(ErrorCode::kFailed,
                   fmt::format("accepted connection {} is not the one from socket:[{}] that "
                               "sock_diag listed in that place",
                               i + 1, b.clients[i]));
    }
    image::UnixPendingConnection* c = out->add_connections();
    c->set_listener(b.ino);
    c->set_client(b.clients[i]);
    c->set_type(b.type);
    c->set_client_shutdown(b.shutdown[i]);
    std::string what = fmt::format("the connection from socket:[{}]", b.clients[i]);
    for (image::UnixMessage& msg : STASIS_TRY(PeekQueue(accepted[i].get(), b.type, what))) {
      *c->add_queue() = std::move(msg);
    }
  }
  return Ok();
}

Result<int> GetSndbuf(int fd) {
  int value = 0;
  socklen_t len = sizeof value;
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &value, &len) < 0) return Error::Errno("SO_SNDBUF");
  return value;
}

Status SendAgain(int fd, const image::UnixPendingConnection& c, const std::string& what) {
  int sndbuf = STASIS_TRY(GetSndbuf(fd));
  for (const image::UnixMessage& msg : c.queue()) {
    STASIS_TRY(RaiseSndbuf(fd, msg.data().size() + kPerMessageOverhead));
    STASIS_TRY(SendMessage(fd, nullptr, c.type(), msg, what));
  }
  // Back to the File's own value (RestoreOptions set it; SO_SNDBUFFORCE
  // doubles what it is given).
  int half = sndbuf / 2;
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &half, sizeof half) < 0) {
    return Error::Errno(what + ": SO_SNDBUFFORCE");
  }
  static constexpr int kHow[] = {-1, SHUT_RD, SHUT_WR, SHUT_RDWR};
  if (c.client_shutdown() > 0 && c.client_shutdown() <= 3 &&
      shutdown(fd, kHow[c.client_shutdown()]) < 0) {
    return Error::Errno(fmt::format("{}: shutdown({})", what, kHow[c.client_shutdown()]));
  }
  return Ok();
}

}  // namespace

Status CheckNoFdsWaiting(pid_t pid, int fd, const std::string& what) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/fdinfo/{}", pid, fd)));
  size_t at = text.find("\nscm_fds:");
  if (at == std::string::npos) return Ok();
  long fds = std::strtol(text.c_str() + at + 10, nullptr, 10);
  if (fds == 0) return Ok();
  return Error::Unsupported(fmt::format(
      "{}: {} file descriptor(s) in flight (SCM_RIGHTS) on connections waiting in its backlog are "
      "not supported",
      what, fds));
}

void AddPendingStep(DumpContext& ctx, std::vector<PendingListener> listeners) {
  if (listeners.empty()) return;
  auto backlogs = std::make_shared<std::vector<Backlog>>();
  size_t connections = 0, with_data = 0;
  std::string what;
  for (PendingListener& l : listeners) {
    Backlog b{l.ino, l.type, std::move(l.fd), {}, {}, l.what};
    for (const Node* c : l.clients) {
      b.clients.push_back(c->ino());
      // Clients without data were shut down by the graph build already.
      b.shutdown.push_back(c->late_queue() ? c->shutdown() : 0);
      with_data += c->late_queue();
    }
    connections += b.clients.size();
    what += (what.empty() ? "" : "; ") + l.what;
    backlogs->push_back(std::move(b));
  }
  LateStep step;
  step.what = what;
  step.why = fmt::format(
      "{} unix connection(s) waiting in its backlog, {} with data the client sent on them",
      connections, with_data);
  step.run = [backlogs]() -> Result<image::LateRecord> {
    image::UnixPendingData data;
    for (const Backlog& b : *backlogs) STASIS_TRY_CTX(ReadBacklog(b, &data), b.what);
    image::LateRecord record;
    record.set_kind(kName);
    record.mutable_state()->PackFrom(data);
    return record;
  };
  ctx.late.push_back(std::move(step));
}

Status ApplyLate(const LateRestore& ctx, const image::LateRecord& record) {
  image::UnixPendingData data;
  if (!record.state().UnpackTo(&data)) return Error::Corrupt("unix pending data does not parse");
  for (const image::UnixPendingConnection& c : data.connections()) {
    std::string what =
        fmt::format("socket:[{}], waiting in the backlog of socket:[{}]", c.client(), c.listener());
    if (c.type() != SOCK_STREAM && c.type() != SOCK_SEQPACKET) {
      return Error::Corrupt(fmt::format("{}: socket type {}", what, c.type()));
    }
    auto [file, fd] = ctx.Find(kName, [&](const image::File& f) {
      image::UnixSocketState state;
      return f.state().UnpackTo(&state) && state.ino() == c.client();
    });
    if (fd < 0) return Error::Corrupt(what + ": no File restored for it");
    STASIS_TRY(SendAgain(fd, c, what));
  }
  return Ok();
}

}  // namespace stasis::kinds::unix_socket
