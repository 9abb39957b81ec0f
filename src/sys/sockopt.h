// Integer socket options with errors that name them, and what a socket is.
#pragma once

#include "sys/result.h"

namespace stasis::sys {

Result<int> GetIntOpt(int fd, int level, int opt, const char* name);
Status SetIntOpt(int fd, int level, int opt, int value, const char* name);

// SO_DOMAIN, SO_TYPE and SO_PROTOCOL of fd; false if it is not a socket.
struct SocketKind {
  int domain = 0, type = 0, protocol = 0;
};
bool GetSocketKind(int fd, SocketKind* kind);

}  // namespace stasis::sys
