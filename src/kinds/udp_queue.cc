#include "kinds/udp_queue.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "sys/sockopt.h"
#include "sys/unique_fd.h"

namespace stasis::kinds::udp_queue {
namespace {

using image::UdpDatagram;
using image::UdpSocketState;

// Larger than any UDP payload (65535 minus the headers).
constexpr size_t kMaxDatagram = 65536;

// Peeks the datagram at the current peek offset; false at the end.
Result<bool> PeekOne(int fd, std::vector<char>& buf, UdpDatagram* d) {
  sockaddr_storage src = {};
  iovec iov = {buf.data(), buf.size()};
  msghdr msg = {};
  msg.msg_name = &src;
  msg.msg_namelen = sizeof(src);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  ssize_t n = recvmsg(fd, &msg, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
  if (n < 0) return Error::Errno("peek a queued datagram");
  if (static_cast<size_t>(n) > buf.size()) {
    return Error(ErrorCode::kFailed, fmt::format("queued datagram of {} bytes is too large", n));
  }
  d->set_source(std::string(reinterpret_cast<const char*>(&src), msg.msg_namelen));
  d->set_data(std::string(buf.data(), static_cast<size_t>(n)));
  return true;
}

// The raw packet that puts a datagram back must fit loopback's MTU (65536):
// an IPv6 one has 48 bytes of headers, an IPv4 one 28 (it always fits).
constexpr size_t kMaxV6Payload = 65536 - 48;

Status PeekAll(int fd, UdpSocketState* s) {
  std::vector<char> buf(kMaxDatagram);
  STASIS_TRY(sys::SetIntOpt(fd, SOL_SOCKET, SO_PEEK_OFF, 0, "SO_PEEK_OFF"));
  for (;;) {
    UdpDatagram d;
    if (!STASIS_TRY(PeekOne(fd, buf, &d))) return Ok();
    sockaddr_in6 src = {};
    std::memcpy(&src, d.source().data(), std::min(d.source().size(), sizeof(src)));
    if (d.data().size() > kMaxV6Payload && src.sin6_family == AF_INET6 &&
        !IN6_IS_ADDR_V4MAPPED(&src.sin6_addr)) {
      return Error::Unsupported(
          fmt::format("a queued IPv6 datagram of {} bytes is too large to be put back (at most {})",
                      d.data().size(), kMaxV6Payload));
    }
    *s->add_queue() = std::move(d);
  }
}

bool IsV4(const sockaddr_storage& a) {
  return a.ss_family == AF_INET ||
         (a.ss_family == AF_INET6 &&
          IN6_IS_ADDR_V4MAPPED(&reinterpret_cast<const sockaddr_in6*>(&a)->sin6_addr));
}

// Address and port of an IPv4 or v4-mapped sockaddr, in network order.
void V4Of(const sockaddr_storage& a, in_addr* addr, uint16_t* port) {
  if (a.ss_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(&a);
    *addr = in->sin_addr;
    *port = in->sin_port;
    return;
  }
  auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a);
  std::memcpy(addr, &in6->sin6_addr.s6_addr[12], 4);
  *port = in6->sin6_port;
}

sockaddr_storage FromBytes(const std::string& raw) {
  sockaddr_storage ss = {};
  std::memcpy(&ss, raw.data(), std::min(raw.size(), sizeof(ss)));
  return ss;
}

uint32_t SumWords(const void* p, size_t len, uint32_t sum) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i + 1 < len; i += 2) sum += static_cast<uint32_t>(b[i] << 8 | b[i + 1]);
  if (len & 1) sum += static_cast<uint32_t>(b[len - 1] << 8);
  return sum;
}

uint16_t Fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  uint16_t c = htons(static_cast<uint16_t>(~sum));
  return c == 0 ? 0xffff : c;
}

Status SendRaw(int family, const std::string& packet, const sockaddr* to, socklen_t len) {
  sys::UniqueFd raw(socket(family, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW));
  if (!raw.valid()) return Error::Errno("raw socket");
  if (sendto(raw.get(), packet.data(), packet.size(), 0, to, len) !=
      static_cast<ssize_t>(packet.size())) {
    return Error::Errno(fmt::format("send a {}-byte datagram back", packet.size()));
  }
  return Ok();
}

// IPv4: the kernel fills the header checksum and id; a zero UDP checksum
// means "none".
Status SendV4(const sockaddr_storage& from, const sockaddr_storage& to, const std::string& data) {
  std::string pkt(sizeof(iphdr) + sizeof(udphdr) + data.size(), '\0');
  auto* ip = reinterpret_cast<iphdr*>(pkt.data());
  auto* udp = reinterpret_cast<udphdr*>(pkt.data() + sizeof(iphdr));
  ip->version = 4;
  ip->ihl = 5;
  ip->ttl = 64;
  ip->protocol = IPPROTO_UDP;
  ip->tot_len = htons(static_cast<uint16_t>(pkt.size()));
  in_addr src, dst;
  V4Of(from, &src, &udp->source);
  V4Of(to, &dst, &udp->dest);
  ip->saddr = src.s_addr;
  ip->daddr = dst.s_addr;
  udp->len = htons(static_cast<uint16_t>(sizeof(udphdr) + data.size()));
  std::memcpy(pkt.data() + sizeof(iphdr) + sizeof(udphdr), data.data(), data.size());
  sockaddr_in sin = {};
  sin.sin_family = AF_INET;
  sin.sin_addr = dst;
  return SendRaw(AF_INET, pkt, reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
}

// IPv6: the UDP checksum is mandatory, over a pseudo-header.
Status SendV6(const sockaddr_storage& from, const sockaddr_storage& to, const std::string& data) {
  auto* src = reinterpret_cast<const sockaddr_in6*>(&from);
  auto* dst = reinterpret_cast<const sockaddr_in6*>(&to);
  std::string pkt(sizeof(ip6_hdr) + sizeof(udphdr) + data.size(), '\0');
  auto* ip = reinterpret_cast<ip6_hdr*>(pkt.data());
  auto* udp = reinterpret_cast<udphdr*>(pkt.data() + sizeof(ip6_hdr));
  uint32_t udp_len = static_cast<uint32_t>(sizeof(udphdr) + data.size());
  ip->ip6_flow = htonl(6u << 28);
  ip->ip6_plen = htons(static_cast<uint16_t>(udp_len));
  ip->ip6_nxt = IPPROTO_UDP;
  ip->ip6_hlim = 64;
  ip->ip6_src = src->sin6_addr;
  ip->ip6_dst = dst->sin6_addr;
  udp->source = src->sin6_port;
  udp->dest = dst->sin6_port;
  udp->len = htons(static_cast<uint16_t>(udp_len));
  std::memcpy(pkt.data() + sizeof(ip6_hdr) + sizeof(udphdr), data.data(), data.size());
  uint32_t sum = SumWords(&ip->ip6_src, 16, 0);
  sum = SumWords(&ip->ip6_dst, 16, sum);
  sum += udp_len + IPPROTO_UDP;
  udp->check = Fold(SumWords(udp, udp_len, sum));
  sockaddr_in6 sin6 = {};
  sin6.sin6_family = AF_INET6;
  sin6.sin6_addr = dst->sin6_addr;
  sin6.sin6_scope_id = dst->sin6_scope_id;
  return SendRaw(AF_INET6, pkt, reinterpret_cast<sockaddr*>(&sin6), sizeof(sin6));
}

// Where a datagram from `from` reaches the socket: its own address, or
// loopback of the datagram's family when it is bound to the wildcard.
sockaddr_storage Destination(const sockaddr_storage& local, const sockaddr_storage& from) {
  sockaddr_storage to = local;
  if (IsV4(from)) {
    sockaddr_in in = {};
    in.sin_family = AF_INET;
    uint16_t port;
    V4Of(local, &in.sin_addr, &port);
    in.sin_port = port;
    if (local.ss_family == AF_INET6 && !IsV4(local)) in.sin_addr.s_addr = 0;  // [::]
    if (in.sin_addr.s_addr == htonl(INADDR_ANY)) in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::memset(&to, 0, sizeof(to));
    std::memcpy(&to, &in, sizeof(in));
    return to;
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&to);
  if (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr)) in6->sin6_addr = in6addr_loopback;
  return to;
}

// Memory the socket's receive queue holds (SO_MEMINFO), which grows with
// every datagram queued. Peeking would count them too, but it marks an
// empty datagram as peeked, which hides it from the next peek at an offset.
Result<uint32_t> QueuedMemory(int fd) {
  uint32_t info[SK_MEMINFO_VARS] = {};
  socklen_t len = sizeof(info);
  if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, info, &len) < 0) return Error::Errno("SO_MEMINFO");
  return info[SK_MEMINFO_RMEM_ALLOC];
}

// Loopback delivery runs in a softirq, perhaps on another CPU: each datagram
// is waited for before the next is sent, which keeps them in order.
Status SendAndWait(int fd, const sockaddr_storage& from, const sockaddr_storage& to,
                   const std::string& data) {
  uint32_t before = STASIS_TRY(QueuedMemory(fd));
  STASIS_TRY(IsV4(from) ? SendV4(from, to, data) : SendV6(from, to, data));
  for (int i = 0; i < 20000; i++) {
    if (STASIS_TRY(QueuedMemory(fd)) != before) return Ok();
    timespec ts = {0, 100000};
    nanosleep(&ts, nullptr);
  }
  return Error(ErrorCode::kFailed, "a datagram sent back did not reach the socket");
}

}  // namespace

Status Dump(int fd, UdpSocketState* s) {
  pollfd p = {fd, POLLIN, 0};
  if (poll(&p, 1, 0) == 1 && (p.revents & POLLERR)) {
    return Error::Unsupported(
        "UDP socket with a pending error (SO_ERROR, or an IP_RECVERR error queue): it cannot be "
        "read without taking it from the program; not supported");
  }
  int off = STASIS_TRY(sys::GetIntOpt(fd, SOL_SOCKET, SO_PEEK_OFF, "SO_PEEK_OFF"));
  s->set_peek_off_on(off >= 0);
  s->set_peek_off(off);
  if (!(p.revents & POLLIN)) return Ok();
  Status st = PeekAll(fd, s);
  // The program's own peek offset, whatever happened.
  Status put_back = sys::SetIntOpt(fd, SOL_SOCKET, SO_PEEK_OFF, off, "SO_PEEK_OFF");
  STASIS_TRY(st);
  return put_back;
}

Status Restore(int fd, const UdpSocketState& s) {
  if (s.queue_size() > 0) {
    sockaddr_storage local = FromBytes(s.local());
    int n = 0;
    for (const UdpDatagram& d : s.queue()) {
      sockaddr_storage from = FromBytes(d.source());
      STASIS_TRY_CTX(SendAndWait(fd, from, Destination(local, from), d.data()),
                     fmt::format("datagram {} of {}", ++n, s.queue_size()));
    }
  }
  return sys::SetIntOpt(fd, SOL_SOCKET, SO_PEEK_OFF, s.peek_off_on() ? s.peek_off() : -1,
                        "SO_PEEK_OFF");
}

}  // namespace stasis::kinds::udp_queue
