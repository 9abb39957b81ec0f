#include "sys/sockopt.h"

#include <fmt/format.h>
#include <sys/socket.h>

namespace stasis::sys {

Result<int> GetIntOpt(int fd, int level, int opt, const char* name) {
  int v = 0;
  socklen_t len = sizeof(v);
  if (getsockopt(fd, level, opt, &v, &len) < 0)
    return Error::Errno(std::string("getsockopt ") + name);
  return v;
}

Status SetIntOpt(int fd, int level, int opt, int value, const char* name) {
  if (setsockopt(fd, level, opt, &value, sizeof(value)) < 0) {
    return Error::Errno(fmt::format("setsockopt {} = {}", name, value));
  }
  return Ok();
}

bool GetSocketKind(int fd, SocketKind* kind) {
  socklen_t len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &kind->domain, &len) < 0) return false;
  len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &kind->type, &len) < 0) return false;
  len = sizeof(int);
  return getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &kind->protocol, &len) == 0;
}

}  // namespace stasis::sys
