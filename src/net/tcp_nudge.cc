#include "net/tcp_nudge.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/ip_icmp.h>
#include <sys/socket.h>

#include <cstring>
#include <vector>

#include "sys/unique_fd.h"

namespace stasis::net {
namespace {

// One step of backoff is undone per message; 12 steps cover a blackout of
// many minutes.
constexpr int kMessages = 12;

struct Ends {
  bool v6;
  in_addr local4, peer4;
  in6_addr local6, peer6;
  uint16_t local_port, peer_port;  // network order
  uint32_t scope;
};

bool ParseOne(const std::string& raw, bool* v6, in_addr* a4, in6_addr* a6, uint16_t* port,
              uint32_t* scope) {
  if (raw.size() >= sizeof(sockaddr_in) &&
      reinterpret_cast<const sockaddr*>(raw.data())->sa_family == AF_INET) {
    sockaddr_in in;
    std::memcpy(&in, raw.data(), sizeof(in));
    *v6 = false;
    *a4 = in.sin_addr;
    *port = in.sin_port;
    return true;
  }
  if (raw.size() < sizeof(sockaddr_in6)) return false;
  sockaddr_in6 in6;
  std::memcpy(&in6, raw.data(), sizeof(in6));
  if (in6.sin6_family != AF_INET6) return false;
  *port = in6.sin6_port;
  *scope = in6.sin6_scope_id;
  *v6 = !IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr);
  if (*v6) {
    *a6 = in6.sin6_addr;
  } else {
    std::memcpy(a4, &in6.sin6_addr.s6_addr[12], 4);
  }
  return true;
}

Result<Ends> Parse(const std::string& local, const std::string& peer) {
  Ends e = {};
  bool lv6 = false, pv6 = false;
  uint32_t scope = 0;
  if (!ParseOne(local, &lv6, &e.local4, &e.local6, &e.local_port, &scope) ||
      !ParseOne(peer, &pv6, &e.peer4, &e.peer6, &e.peer_port, &e.scope) || lv6 != pv6) {
    return Error::Invalid("nudge: not a TCP/IP address pair");
  }
  e.v6 = lv6;
  return e;
}

uint16_t Checksum(const void* p, size_t len) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  uint32_t sum = 0;
  for (size_t i = 0; i + 1 < len; i += 2) sum += static_cast<uint32_t>(b[i] << 8 | b[i + 1]);
  if (len & 1) sum += static_cast<uint32_t>(b[len - 1] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return htons(static_cast<uint16_t>(~sum));
}

// The first 8 bytes of the segment the peer keeps retransmitting.
void QuoteTcp(char* out, const Ends& e, uint32_t peer_una) {
  uint32_t seq = htonl(peer_una);
  std::memcpy(out, &e.peer_port, 2);
  std::memcpy(out + 2, &e.local_port, 2);
  std::memcpy(out + 4, &seq, 4);
}

std::string MessageV4(const Ends& e, uint32_t peer_una) {
  std::string m(8 + sizeof(iphdr) + 8, '\0');
  auto* icmp = reinterpret_cast<icmphdr*>(m.data());
  icmp->type = ICMP_DEST_UNREACH;
  icmp->code = ICMP_HOST_UNREACH;
  auto* ip = reinterpret_cast<iphdr*>(m.data() + 8);
  ip->version = 4;
  ip->ihl = 5;
  ip->ttl = 64;
  ip->protocol = IPPROTO_TCP;
  ip->tot_len = htons(sizeof(iphdr) + 20);
  ip->saddr = e.peer4.s_addr;
  ip->daddr = e.local4.s_addr;
  ip->check = Checksum(ip, sizeof(iphdr));
  QuoteTcp(m.data() + 8 + sizeof(iphdr), e, peer_una);
  icmp->checksum = Checksum(m.data(), m.size());
  return m;
}

// The kernel computes ICMPv6 checksums for raw ICMPv6 sockets.
std::string MessageV6(const Ends& e, uint32_t peer_una) {
  std::string m(8 + sizeof(ip6_hdr) + 8, '\0');
  auto* icmp = reinterpret_cast<icmp6_hdr*>(m.data());
  icmp->icmp6_type = ICMP6_DST_UNREACH;
  icmp->icmp6_code = ICMP6_DST_UNREACH_NOROUTE;
  auto* ip = reinterpret_cast<ip6_hdr*>(m.data() + 8);
  ip->ip6_flow = htonl(6u << 28);
  ip->ip6_plen = htons(20);
  ip->ip6_nxt = IPPROTO_TCP;
  ip->ip6_hlim = 64;
  ip->ip6_src = e.peer6;
  ip->ip6_dst = e.local6;
  QuoteTcp(m.data() + 8 + sizeof(ip6_hdr), e, peer_una);
  return m;
}

}  // namespace

Result<std::string> NudgeMessage(const std::string& local, const std::string& peer,
                                 uint32_t peer_una, bool* v6, std::string* to) {
  Ends e = STASIS_TRY(Parse(local, peer));
  *v6 = e.v6;
  if (e.v6) {
    sockaddr_in6 sin6 = {};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_addr = e.peer6;
    sin6.sin6_scope_id = e.scope;
    to->assign(reinterpret_cast<const char*>(&sin6), sizeof(sin6));
    return MessageV6(e, peer_una);
  }
  sockaddr_in sin = {};
  sin.sin_family = AF_INET;
  sin.sin_addr = e.peer4;
  to->assign(reinterpret_cast<const char*>(&sin), sizeof(sin));
  return MessageV4(e, peer_una);
}

Status NudgePeer(const std::string& local, const std::string& peer, uint32_t rcv_wup,
                 uint32_t rcv_nxt) {
  sys::UniqueFd raw;
  std::vector<uint32_t> candidates = {rcv_wup};
  if (rcv_nxt != rcv_wup) candidates.push_back(rcv_nxt);
  for (uint32_t una : candidates) {
    bool v6 = false;
    std::string to;
    std::string msg = STASIS_TRY(NudgeMessage(local, peer, una, &v6, &to));
    if (!raw.valid()) {
      raw.reset(v6 ? socket(AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMPV6)
                   : socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP));
      if (!raw.valid()) return Error::Errno("raw ICMP socket");
    }
    for (int i = 0; i < kMessages; i++) {
      if (sendto(raw.get(), msg.data(), msg.size(), 0, reinterpret_cast<const sockaddr*>(to.data()),
                 static_cast<socklen_t>(to.size())) < 0) {
        return Error::Errno("send ICMP unreachable to the peer");
      }
    }
  }
  return Ok();
}

namespace {

std::string ShowEnd(const std::string& sockaddr_bytes) {
  Result<sys::FlowEnd> end = sys::ParseFlowEnd(sockaddr_bytes);
  if (!end.ok()) return "?";
  char host[INET6_ADDRSTRLEN] = "?";
  inet_ntop(end->v4 ? AF_INET : AF_INET6, end->addr.data(), host, sizeof(host));
  if (end->v4) return fmt::format("{}:{}", host, end->port);
  return fmt::format("[{}]:{}", host, end->port);
}

}  // namespace

void NudgePeer(const sys::PeerNudge& nudge, Logger& log) {
  Status nudged = NudgePeer(nudge.flow.local, nudge.flow.peer, nudge.rcv_wup, nudge.rcv_nxt);
  if (!nudged.ok()) {
    log.Warn(fmt::format("{} -> {}: {} (the peer resumes on its own timer)",
                         ShowEnd(nudge.flow.local), ShowEnd(nudge.flow.peer),
                         nudged.error().ToString()));
  }
}

}  // namespace stasis::net
