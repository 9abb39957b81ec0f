#include "migrate/channel.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "migrate/channel_tls.h"
#include "migrate/token.h"

namespace stasis::migrate {
namespace {

using Clock = std::chrono::steady_clock;

// The clear hello each end sends first: magic, channel version, mode.
constexpr size_t kHelloBytes = 8;
constexpr uint8_t kChannelVersion = 1;
constexpr uint8_t kModeTls = 'T';
constexpr uint8_t kModePlain = 'P';
constexpr char kMagic[] = "STASIS";  // 6 bytes
// A TLS record's worth per SSL call keeps each hold of the session's lock
// short, so the reader is never kept waiting behind a whole buffer.
constexpr size_t kTlsWriteChunk = 64 << 10;
// With a bandwidth cap, how far ahead of the rate a burst may go.
constexpr double kBurstSeconds = 0.02;
// A writer that OpenSSL asks to read (a TLS 1.3 key update) looks again this
// often: the reader thread may be the one that consumes what it waits for.
constexpr int kWriterReadPollMs = 20;

Clock::time_point DeadlineAfter(int ms) {
  return ms > 0 ? Clock::now() + std::chrono::milliseconds(ms) : Clock::time_point::max();
}

struct HostPort {
  std::string host;
  std::string port;
};

Result<HostPort> SplitHostPort(const std::string& text) {
  size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 == text.size()) {
    return Error::Invalid("address " + text + ": expected HOST:PORT");
  }
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  std::string port = text.substr(colon + 1);
  if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 ||
      std::stoi(port) > 65535) {
    return Error::Invalid("address " + text + ": bad port " + port);
  }
  return HostPort{host, port};
}

struct AddrInfoFree {
  void operator()(addrinfo* p) const { freeaddrinfo(p); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoFree>;

Result<AddrInfoPtr> Resolve(const std::string& text, bool passive) {
  HostPort hp = STASIS_TRY(SplitHostPort(text));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* list = nullptr;
  int rc = getaddrinfo(hp.host.empty() ? nullptr : hp.host.c_str(), hp.port.c_str(), &hints, &list);
  if (rc != 0) return Error::NotFound("address " + text + ": " + gai_strerror(rc));
  return AddrInfoPtr(list);
}

std::string AddressText(const sockaddr* sa) {
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
    return std::string(host) + ":" + std::to_string(port);
  }
  if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    port = ntohs(in6->sin6_port);
  }
  return "[" + std::string(host) + "]:" + std::to_string(port);
}

// Waits until fd is ready for `events` or the deadline passes.
Status WaitFor(int fd, short events, Clock::time_point deadline, const std::string& peer,
               const char* what) {
  for (;;) {
    int ms = -1;
    if (deadline != Clock::time_point::max()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        return Error::Timeout(std::string(what) + ": " + peer + " stayed silent past the deadline");
      }
      ms = static_cast<int>(std::min<int64_t>(left.count() + 1, 1 << 30));
    }
    pollfd p{fd, events, 0};
    int rc = poll(&p, 1, ms);
    if (rc > 0) return Ok();  // ready, or an error the next call reports
    if (rc < 0 && errno != EINTR) return Error::Errno(std::string(what) + ": poll");
  }
}

Status SetSocketOptions(int fd) {
  int one = 1;
  // Batching is Write's job (kWriteBuffer); a Flush must go out now.
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    return Error::Errno("setsockopt TCP_NODELAY");
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return Error::Errno("fcntl O_NONBLOCK");
  }
  return Ok();
}

// A non-blocking connect to one address, bounded by the deadline.
Result<sys::UniqueFd> ConnectOne(const addrinfo* ai, Clock::time_point deadline,
                                 const std::string& peer) {
  sys::UniqueFd fd(socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return Error::Errno("socket");
  if (connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
    if (errno != EINPROGRESS) return Error::Io("connect to " + peer, errno);
    STASIS_TRY(WaitFor(fd.get(), POLLOUT, deadline, peer, "connect"));
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
      return Error::Errno("getsockopt SO_ERROR");
    }
    if (err != 0) return Error::Io("connect to " + peer, err);
  }
  return fd;
}

// Refused before any connection: a TLS end with no token could only fail
// the handshake, and the peer would blame its own token.
Status CheckOptions(const ChannelOptions& options) {
  if (!options.insecure && options.token.size() < kMinTokenBytes) {
    return Error::Invalid("migration channel: no token of at least " +
                          std::to_string(kMinTokenBytes) +
                          " bytes (give a token file, or --insecure on a trusted link)");
  }
  return Ok();
}

}  // namespace

// --- setting up ----------------------------------------------------------------

Channel::Channel(sys::UniqueFd fd, std::string peer, const ChannelOptions& options)
    : fd_(std::move(fd)),
      peer_(std::move(peer)),
      io_timeout_ms_(options.io_timeout_ms),
      write_buffer_(new uint8_t[kWriteBuffer]),
      bytes_per_second_(options.bandwidth_mbps > 0 ? options.bandwidth_mbps * 1e6 / 8 : 0),
      bucket_time_(Clock::now()),
      read_buffer_(new uint8_t[kReadBuffer]) {
  bucket_ = bytes_per_second_ * kBurstSeconds;
}

Channel::~Channel() = default;

Result<std::unique_ptr<Channel>> Channel::Connect(const std::string& host_port,
                                                  const ChannelOptions& options, int timeout_ms) {
  STASIS_TRY(CheckOptions(options));
  Clock::time_point deadline = DeadlineAfter(timeout_ms);
  AddrInfoPtr list = STASIS_TRY(Resolve(host_port, false));
  Error last = Error::NotFound("address " + host_port + ": nothing to connect to");
  for (const addrinfo* ai = list.get(); ai != nullptr; ai = ai->ai_next) {
    std::string peer = AddressText(ai->ai_addr);
    auto fd = ConnectOne(ai, deadline, peer);
    if (!fd.ok()) {
      last = std::move(fd).error();
      continue;
    }
    STASIS_TRY_CTX(SetSocketOptions(fd->get()), "connection to " + peer);
    std::unique_ptr<Channel> channel(new Channel(std::move(fd).value(), peer, options));
    STASIS_TRY(channel->Handshake(options, false, deadline));
    return channel;
  }
  return last;
}

Result<Listener> Listener::Listen(const std::string& host_port) {
  AddrInfoPtr list = STASIS_TRY(Resolve(host_port, true));
  const addrinfo* ai = list.get();
  sys::UniqueFd fd(socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Error::Errno("listen on " + host_port + ": socket");
  int one = 1;
  // A receiver restarted right after a migration must get its port back
  // while the last connection sits in TIME_WAIT.
  if (setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
    return Error::Errno("listen on " + host_port + ": SO_REUSEADDR");
  }
  if (bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
    return Error::Errno("listen on " + host_port + ": bind");
  }
  if (listen(fd.get(), 16) != 0) return Error::Errno("listen on " + host_port);
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    return Error::Errno("listen on " + host_port + ": getsockname");
  }
  int port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                         : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  return Listener(std::move(fd), port);
}

Result<std::unique_ptr<Channel>> Listener::Accept(const ChannelOptions& options,
                                                  int handshake_timeout_ms) {
  STASIS_TRY(CheckOptions(options));
  sockaddr_storage from{};
  socklen_t len = sizeof from;
  int raw;
  do {
    raw = accept4(fd_.get(), reinterpret_cast<sockaddr*>(&from), &len, SOCK_CLOEXEC);
  } while (raw < 0 && (errno == EINTR || errno == ECONNABORTED));
  if (raw < 0) return Error::Errno("accept on port " + std::to_string(port_));
  sys::UniqueFd fd(raw);
  std::string peer = AddressText(reinterpret_cast<sockaddr*>(&from));
  STASIS_TRY_CTX(SetSocketOptions(fd.get()), "connection from " + peer);
  std::unique_ptr<Channel> channel(new Channel(std::move(fd), peer, options));
  STASIS_TRY(channel->Handshake(options, true, DeadlineAfter(handshake_timeout_ms)));
  return channel;
}

namespace {

// Sends and receives the clear hello, all of it or an error.
Status ExchangeHello(int fd, uint8_t mode, Clock::time_point deadline, const std::string& peer) {
  uint8_t mine[kHelloBytes];
  memcpy(mine, kMagic, 6);
  mine[6] = kChannelVersion;
  mine[7] = mode;
  size_t sent = 0;
  while (sent < kHelloBytes) {
    ssize_t n = send(fd, mine + sent, kHelloBytes - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EAGAIN) {
      STASIS_TRY(WaitFor(fd, POLLOUT, deadline, peer, "channel hello"));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::Io("channel hello to " + peer, errno);
    sent += static_cast<size_t>(n);
  }
  uint8_t theirs[kHelloBytes];
  size_t got = 0;
  while (got < kHelloBytes) {
    ssize_t n = recv(fd, theirs + got, kHelloBytes - got, 0);
    if (n < 0 && errno == EAGAIN) {
      STASIS_TRY(WaitFor(fd, POLLIN, deadline, peer, "channel hello"));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::Io("channel hello from " + peer, errno);
    if (n == 0) {
      return Error::Io("channel hello: " + peer + " closed the connection before its hello");
    }
    got += static_cast<size_t>(n);
    // A TLS ClientHello (0x16 0x03) or an HTTP answer is not worth waiting for.
    if (memcmp(theirs, kMagic, std::min<size_t>(got, 6)) != 0) {
      return Error::Invalid("channel hello: " + peer +
                            " is not a stasis migration endpoint (it sent no stasis hello)");
    }
  }
  if (theirs[6] != kChannelVersion) {
    return Error::Invalid("channel hello: " + peer + " speaks channel version " +
                          std::to_string(theirs[6]) + ", we speak " +
                          std::to_string(kChannelVersion));
  }
  if (theirs[7] != mode) {
    if (mode == kModeTls) {
      return Error::Permission("channel with " + peer +
                               ": the peer speaks plain TCP: both ends need --insecure or neither");
    }
    return Error::Permission("channel with " + peer +
                             ": the peer speaks TLS: both ends need --insecure or neither");
  }
  return Ok();
}

}  // namespace

Status Channel::Handshake(const ChannelOptions& options, bool server, Clock::time_point deadline) {
  bool tls = !options.insecure;
  STASIS_TRY(ExchangeHello(fd_.get(), tls ? kModeTls : kModePlain, deadline, peer_));
  if (!tls) return Ok();
  tls_ = STASIS_TRY(Tls::Create(fd_.get(), options.token, server, peer_));
  for (;;) {
    Tls::Step step = STASIS_TRY(tls_->Handshake());
    if (step.want == Tls::Want::kNothing) return Ok();
    STASIS_TRY(WaitFor(fd_.get(), step.want == Tls::Want::kRead ? POLLIN : POLLOUT, deadline, peer_,
                       "TLS handshake"));
  }
}

// --- moving bytes ------------------------------------------------------------

Error Channel::Broken(const std::string& what, int errnum) const {
  if (closed_.load()) return Error::Io("channel to " + peer_ + ": closed while " + what);
  return Error::Io(what + " " + peer_, errnum);
}

Result<size_t> Channel::SendSome(const uint8_t* data, size_t len) {
  Clock::time_point deadline = DeadlineAfter(io_timeout_ms_.load());
  for (;;) {
    if (closed_.load()) return Broken("sending");
    if (tls_ == nullptr) {
      ssize_t n = send(fd_.get(), data, len, MSG_NOSIGNAL);
      if (n >= 0) return static_cast<size_t>(n);
      if (errno == EINTR) continue;
      if (errno != EAGAIN) return Broken("send to", errno);
      STASIS_TRY(WaitFor(fd_.get(), POLLOUT, deadline, peer_, "send"));
      continue;
    }
    auto tried = tls_->Write(data, std::min(len, kTlsWriteChunk));
    if (!tried.ok()) {
      if (closed_.load()) return Broken("sending");
      return std::move(tried).error();
    }
    Tls::Step step = *tried;
    if (step.bytes > 0) return step.bytes;
    if (step.want == Tls::Want::kWrite) {
      STASIS_TRY(WaitFor(fd_.get(), POLLOUT, deadline, peer_, "send"));
    } else if (Clock::now() >= deadline) {
      return Error::Timeout("send: " + peer_ + " stayed silent past the deadline");
    } else {
      pollfd p{fd_.get(), POLLIN, 0};
      poll(&p, 1, kWriterReadPollMs);
    }
  }
}

void Channel::Throttle(size_t len) {
  if (bytes_per_second_ <= 0) return;
  auto now = Clock::now();
  double burst = std::max(bytes_per_second_ * kBurstSeconds, static_cast<double>(kTlsWriteChunk));
  bucket_ = std::min(burst, bucket_ + std::chrono::duration<double>(now - bucket_time_).count() *
                                          bytes_per_second_);
  bucket_time_ = now;
  bucket_ -= static_cast<double>(len);
  if (bucket_ < 0) {
    // Paid in advance: the debt is slept off now, so the average holds.
    std::this_thread::sleep_for(std::chrono::duration<double>(-bucket_ / bytes_per_second_));
  }
}

Status Channel::SendAll(const uint8_t* data, size_t len) {
  while (len > 0) {
    size_t chunk = std::min(len, kTlsWriteChunk);
    Throttle(chunk);
    size_t done = 0;
    while (done < chunk) {
      auto n = SendSome(data + done, chunk - done);
      if (!n.ok()) {
        write_failed_ = true;
        return std::move(n).error();
      }
      done += *n;
      bytes_sent_.fetch_add(*n, std::memory_order_relaxed);
    }
    data += chunk;
    len -= chunk;
  }
  return Ok();
}

Status Channel::SendBuffered() {
  size_t used = std::exchange(write_used_, 0);
  return SendAll(write_buffer_.get(), used);
}

Status Channel::Write(const void* data, size_t len) {
  if (write_failed_) return Error::Io("send to " + peer_ + ": an earlier send failed");
  auto* bytes = static_cast<const uint8_t*>(data);
  if (write_used_ + len <= kWriteBuffer) {
    memcpy(write_buffer_.get() + write_used_, bytes, len);
    write_used_ += len;
    return Ok();
  }
  STASIS_TRY(SendBuffered());
  if (len >= kWriteBuffer) return SendAll(bytes, len);  // pages go out without a copy
  memcpy(write_buffer_.get(), bytes, len);
  write_used_ = len;
  return Ok();
}

Status Channel::Flush() {
  if (write_failed_) return Error::Io("send to " + peer_ + ": an earlier send failed");
  return SendBuffered();
}

Result<size_t> Channel::ReceiveSome(uint8_t* buf, size_t len) {
  Clock::time_point deadline = DeadlineAfter(io_timeout_ms_.load());
  for (;;) {
    if (closed_.load()) return Broken("receiving");
    if (tls_ == nullptr) {
      ssize_t n = recv(fd_.get(), buf, len, 0);
      if (n >= 0) return static_cast<size_t>(n);
      if (errno == EINTR) continue;
      if (errno != EAGAIN) return Broken("receive from", errno);
      STASIS_TRY(WaitFor(fd_.get(), POLLIN, deadline, peer_, "receive"));
      continue;
    }
    auto step = tls_->Read(buf, len);
    if (!step.ok()) {
      if (closed_.load()) return Broken("receiving");
      return std::move(step).error();
    }
    if (step->bytes > 0 || step->end) return step->bytes;
    STASIS_TRY(WaitFor(fd_.get(), step->want == Tls::Want::kWrite ? POLLOUT : POLLIN, deadline,
                       peer_, "receive"));
  }
}

Result<size_t> Channel::Read(void* buf, size_t len) {
  if (len == 0) return size_t{0};
  auto* out = static_cast<uint8_t*>(buf);
  if (read_begin_ == read_end_) {
    // Large reads (page data) bypass the buffer; small ones (16-byte frame
    // headers) are served from it.
    if (len >= kReadBuffer / 2) {
      size_t n = STASIS_TRY(ReceiveSome(out, len));
      bytes_received_.fetch_add(n, std::memory_order_relaxed);
      return n;
    }
    read_begin_ = read_end_ = 0;
    read_end_ = STASIS_TRY(ReceiveSome(read_buffer_.get(), kReadBuffer));
    bytes_received_.fetch_add(read_end_, std::memory_order_relaxed);
    if (read_end_ == 0) return size_t{0};
  }
  size_t n = std::min(len, read_end_ - read_begin_);
  memcpy(out, read_buffer_.get() + read_begin_, n);
  read_begin_ += n;
  return n;
}

Status Channel::ShutdownWrite() {
  STASIS_TRY(Flush());
  if (tls_ != nullptr) {
    Clock::time_point deadline = DeadlineAfter(io_timeout_ms_.load());
    for (;;) {
      Tls::Step step = STASIS_TRY(tls_->SendCloseNotify());
      if (step.want != Tls::Want::kWrite) break;
      STASIS_TRY(WaitFor(fd_.get(), POLLOUT, deadline, peer_, "close_notify"));
    }
  }
  if (shutdown(fd_.get(), SHUT_WR) != 0) return Broken("end of stream to", errno);
  return Ok();
}

void Channel::Close() {
  // shutdown, not close: the fd number stays ours until the destructor, so a
  // thread still inside poll or recv cannot meet a reused descriptor.
  if (!closed_.exchange(true)) shutdown(fd_.get(), SHUT_RDWR);
}

}  // namespace stasis::migrate
