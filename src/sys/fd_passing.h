// Messages with an optional fd attached (SCM_RIGHTS), over a connected
// AF_UNIX socket: how the restorer talks to its namespace init and how
// `stasis run` talks to the session init.
#pragma once

#include <cstddef>

#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::sys {

Status SendMessage(int sock, const void* data, size_t len, int fd = -1);
// Returns the message length; a received fd goes to *fd (closed if null).
Result<size_t> ReceiveMessage(int sock, void* data, size_t max, UniqueFd* fd = nullptr);
// A message of exactly len bytes.
Status ReceiveExactly(int sock, void* data, size_t len, UniqueFd* fd = nullptr);

}  // namespace stasis::sys
