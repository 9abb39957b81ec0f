#include "kinds/moving_host.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

namespace stasis::kinds {

std::string ShowInetAddr(const std::string& addr) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (addr.size() >= sizeof(sockaddr_in6)) {
    sockaddr_in6 in6;
    std::memcpy(&in6, addr.data(), sizeof(in6));
    if (in6.sin6_family == AF_INET6) {
      inet_ntop(AF_INET6, &in6.sin6_addr, host, sizeof(host));
      return fmt::format("[{}]:{}", host, ntohs(in6.sin6_port));
    }
  }
  if (addr.size() < sizeof(sockaddr_in)) return "?";
  sockaddr_in in;
  std::memcpy(&in, addr.data(), sizeof(in));
  inet_ntop(AF_INET, &in.sin_addr, host, sizeof(host));
  return fmt::format("{}:{}", host, ntohs(in.sin_port));
}

Error OutsidePeerCannotMove(const char* proto, const FdDumpInput& in, const std::string& local,
                            const std::string& peer) {
  return Error::Unsupported(fmt::format(
      "{} socket {} -> {} (pid {} fd {}): its peer is outside the tree and its address cannot "
      "move to another machine; run the program in a session with --net=isolated",
      proto, ShowInetAddr(local), ShowInetAddr(peer), in.pid, in.fd));
}

}  // namespace stasis::kinds
