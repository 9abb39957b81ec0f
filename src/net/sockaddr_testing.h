// For unit tests: socket addresses packed the way the engine carries them
// (the raw sockaddr bytes in a std::string).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>

#include <string>

namespace stasis::net::sockaddr_testing {

inline std::string V4(const char* ip, int port) {
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, ip, &a.sin_addr);
  return std::string(reinterpret_cast<const char*>(&a), sizeof(a));
}

inline std::string V6(const char* ip, int port) {
  sockaddr_in6 a = {};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  inet_pton(AF_INET6, ip, &a.sin6_addr);
  return std::string(reinterpret_cast<const char*>(&a), sizeof(a));
}

}  // namespace stasis::net::sockaddr_testing
