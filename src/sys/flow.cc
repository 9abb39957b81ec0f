#include "sys/flow.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

namespace stasis::sys {

Result<FlowEnd> ParseFlowEnd(const std::string& raw) {
  const sockaddr* sa = reinterpret_cast<const sockaddr*>(raw.data());
  FlowEnd e;
  if (raw.size() >= sizeof(sockaddr_in) && sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    e.v4 = true;
    std::memcpy(e.addr.data(), &in->sin_addr, 4);
    e.port = ntohs(in->sin_port);
    return e;
  }
  if (raw.size() >= sizeof(sockaddr_in6) && sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    e.v4 = IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr);
    std::memcpy(e.addr.data(), &in6->sin6_addr.s6_addr[e.v4 ? 12 : 0], e.v4 ? 4 : 16);
    e.port = ntohs(in6->sin6_port);
    return e;
  }
  return Error::Invalid("network lock: not an IPv4 or IPv6 address");
}

}  // namespace stasis::sys
