#include "kinds/tcp_states.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "sys/sockopt.h"

namespace stasis::kinds::tcp_states {
namespace {

using image::TcpSocketState;

constexpr int kWaitMs = 2000;

short PollNow(int fd) {
  pollfd p = {fd, POLLIN | POLLRDHUP, 0};
  return poll(&p, 1, 0) == 1 ? p.revents : 0;
}

bool FinReceived(int state) {
  return state == TCP_CLOSE_WAIT || state == TCP_LAST_ACK || state == TCP_CLOSING;
}

bool FinQueued(int state) {
  return state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2 || state == TCP_CLOSING ||
         state == TCP_LAST_ACK;
}

int TcpState(int fd) {
  tcp_info info = {};
  socklen_t len = sizeof(info);
  return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0 ? -1 : info.tcpi_state;
}

// Waits (a bounded time) until done() holds.
template <typename F>
bool WaitFor(F done) {
  for (int i = 0; i < kWaitMs; i++) {
    if (done()) return true;
    timespec ts = {0, 1000000};
    nanosleep(&ts, nullptr);
  }
  return done();
}

// "0100007F:1F90" as /proc/net/tcp{,6} prints it: the address in the
// kernel's byte order, 32 bits at a time, and the port in host order.
std::string ProcAddress(const std::string& field, int family) {
  size_t colon = field.find(':');
  if (colon == std::string::npos) return field;
  std::string hex = field.substr(0, colon);
  unsigned char bytes[16] = {};
  for (size_t i = 0; i * 8 < hex.size() && i < 4; i++) {
    uint32_t word = static_cast<uint32_t>(std::stoul(hex.substr(i * 8, 8), nullptr, 16));
    std::memcpy(bytes + i * 4, &word, 4);
  }
  int port = static_cast<int>(std::stoul(field.substr(colon + 1), nullptr, 16));
  char host[INET6_ADDRSTRLEN] = "?";
  inet_ntop(family, bytes, host, sizeof(host));
  return family == AF_INET ? fmt::format("{}:{}", host, port) : fmt::format("[{}]:{}", host, port);
}

// Local and remote address of the socket with this inode, or "".
std::string ProcAddresses(ino_t inode, int family) {
  std::ifstream f(family == AF_INET ? "/proc/net/tcp" : "/proc/net/tcp6");
  std::string line;
  std::getline(f, line);  // the header
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string sl, local, remote, st, queues, tr, retr, uid, timeout, ino;
    in >> sl >> local >> remote >> st >> queues >> tr >> retr >> uid >> timeout >> ino;
    if (ino == std::to_string(inode)) {
      return fmt::format("{} -> {}", ProcAddress(local, family), ProcAddress(remote, family));
    }
  }
  return "";
}

sockaddr_storage Loopback(int family, socklen_t* len) {
  sockaddr_storage ss = {};
  if (family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&ss);
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *len = sizeof(*in);
  } else {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
    in6->sin6_family = AF_INET6;
    in6->sin6_addr = in6addr_loopback;
    *len = sizeof(*in6);
  }
  return ss;
}

// Writes all of data through `from`, a connected socket.
Status Feed(int from, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = send(from, data.data() + done, data.size() - done, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) return Error::Errno("refill closed socket");
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    pollfd p = {from, POLLOUT, 0};
    if (poll(&p, 1, kWaitMs) <= 0) {
      return Error(ErrorCode::kFailed,
                   fmt::format("refill closed socket: stuck at {} of {} bytes", done, data.size()));
    }
  }
  return Ok();
}

}  // namespace

const char* StateName(int state) {
  static const char* kNames[] = {
      "?",     "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",   "TIME_WAIT",
      "CLOSE", "CLOSE_WAIT",  "LAST_ACK", "LISTEN",   "CLOSING",   "NEW_SYN_RECV"};
  return state >= 0 && state < 13 ? kNames[state] : "?";
}

bool IsHalfClosed(int state) { return FinReceived(state) || FinQueued(state); }

Status DumpShutdown(int fd, TcpSocketState* s) {
  short ev = PollNow(fd);
  if (ev & POLLERR) {
    return Error::Unsupported(
        fmt::format("TCP socket in state {} has a pending error (SO_ERROR or an error "
                    "queue); it cannot be read without taking it from the program: not "
                    "supported",
                    StateName(s->state())));
  }
  s->set_rcv_shutdown((ev & POLLRDHUP) != 0);
  return Ok();
}

void AccountFins(int state, int* outq, int* unsent, TcpSocketState* s) {
  s->set_fin_received(FinReceived(state));
  if (!FinQueued(state)) return;
  s->set_fin_queued(true);
  // The FIN is the last sequence number: anything unsent includes it.
  s->set_fin_unsent(*unsent > 0);
  if (*unsent > 0) --*unsent;
  // Unacknowledged everywhere but FIN_WAIT2.
  if (state != TCP_FIN_WAIT2 && *outq > 0) --*outq;
}

uint32_t SendDataEnd(const TcpSocketState& s) { return s.send_seq() - (s.fin_queued() ? 1 : 0); }

Status ReplayInRepair(int fd, const TcpSocketState& s, bool resend) {
  if (s.fin_queued() && !s.fin_unsent() && !resend && shutdown(fd, SHUT_WR) < 0) {
    return Error::Errno("shutdown(SHUT_WR) in repair mode");
  }
  if (s.rcv_shutdown() && shutdown(fd, SHUT_RD) < 0) return Error::Errno("shutdown(SHUT_RD)");
  return Ok();
}

Status ReplayAfterRepair(int fd, const TcpSocketState& s, bool resend) {
  if (s.fin_queued() && (s.fin_unsent() || resend) && shutdown(fd, SHUT_WR) < 0) {
    return Error::Errno("shutdown(SHUT_WR)");
  }
  return Ok();
}

Status DumpClosed(int fd, TcpSocketState* s) {
  STASIS_TRY(DumpShutdown(fd, s));
  // A fresh socket's read side is open; a connection that ended (FIN both
  // ways, reset, or a failed connect) shut both sides.
  if (!s->rcv_shutdown()) return Ok();
  s->set_ended(true);
  int inq = 0;
  if (ioctl(fd, FIONREAD, &inq) < 0) return Error::Errno("FIONREAD");
  std::string data(static_cast<size_t>(inq), '\0');
  if (inq > 0) {
    ssize_t n = recv(fd, data.data(), data.size(), MSG_PEEK | MSG_DONTWAIT);
    if (n != inq) return Error::Errno(fmt::format("peek {} unread bytes", inq));
  }
  s->set_recv_queue(data);
  return Ok();
}

// Connects to a throwaway loopback listener, which sends the unread bytes
// and closes; then closes our side too. Both FINs are acknowledged before
// the socket is handed over, so it is in TCP_CLOSE and sends nothing more.
Result<sys::UniqueFd> RestoreEnded(const TcpSocketState& s) {
  socklen_t len = 0;
  sockaddr_storage addr = Loopback(s.family(), &len);
  sys::UniqueFd listener(socket(s.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
  if (!listener.valid()) return Error::Errno("socket");
  if (bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0 ||
      listen(listener.get(), 1) < 0 ||
      getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) < 0) {
    return Error::Errno("throwaway loopback listener");
  }
  sys::UniqueFd fd(socket(s.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
  if (!fd.valid()) return Error::Errno("socket");
  STASIS_TRY(sys::SetIntOpt(fd.get(), SOL_SOCKET, SO_REUSEPORT, s.reuseport(), "SO_REUSEPORT"));
  if (s.family() == AF_INET6) {
    STASIS_TRY(sys::SetIntOpt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, s.v6only(), "IPV6_V6ONLY"));
  }
  const std::string& data = s.recv_queue();
  if (!data.empty()) {
    // The window is set at connect: room for all of it.
    STASIS_TRY(sys::SetIntOpt(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE,
                              static_cast<int>(data.size() * 2 + 65536), "SO_RCVBUFFORCE"));
  }
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0) {
    return Error::Errno("connect to the throwaway listener");
  }
  sys::UniqueFd peer(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!peer.valid()) return Error::Errno("accept from the throwaway listener");
  STASIS_TRY(Feed(peer.get(), data));
  peer.reset();  // its FIN follows the bytes
  if (!WaitFor([&] { return (PollNow(fd.get()) & POLLRDHUP) != 0; })) {
    return Error(ErrorCode::kFailed, "closed socket: the throwaway peer's FIN did not arrive");
  }
  if (shutdown(fd.get(), SHUT_WR) < 0) return Error::Errno("shutdown(SHUT_WR)");
  if (!WaitFor([&] { return TcpState(fd.get()) == TCP_CLOSE; })) {
    return Error(ErrorCode::kFailed, "closed socket: our FIN was not acknowledged");
  }
  int inq = 0;
  if (ioctl(fd.get(), FIONREAD, &inq) < 0 || static_cast<size_t>(inq) != data.size()) {
    return Error(ErrorCode::kFailed,
                 fmt::format("closed socket holds {} unread bytes, not {}", inq, data.size()));
  }
  return fd;
}

Error Refuse(const std::string& what, ino_t inode, int family, int state) {
  std::string addrs = ProcAddresses(inode, family);
  return Error::Unsupported(fmt::format("{}: TCP socket {}in state {} is not supported{}", what,
                                        addrs.empty() ? "" : addrs + " ", StateName(state),
                                        state == TCP_SYN_SENT
                                            ? " (a connect() in progress; dump again once it "
                                              "completed or failed)"
                                            : ""));
}

}  // namespace stasis::kinds::tcp_states
