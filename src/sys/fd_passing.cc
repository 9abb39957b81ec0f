#include "sys/fd_passing.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace stasis::sys {

Status SendMessage(int sock, const void* data, size_t len, int fd) {
  struct iovec iov = {const_cast<void*>(data), len};
  char control[CMSG_SPACE(sizeof(int))] = {};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  ssize_t n;
  do {
    n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Error::Errno("sendmsg");
  return Ok();
}

Result<size_t> ReceiveMessage(int sock, void* data, size_t max, UniqueFd* fd) {
  struct iovec iov = {data, max};
  char control[CMSG_SPACE(sizeof(int))] = {};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Error::Errno("recvmsg");
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int received;
    memcpy(&received, CMSG_DATA(c), sizeof(int));
    if (fd != nullptr) {
      fd->reset(received);
    } else {
      close(received);
    }
  }
  if (n == 0) return Error::NotFound("the other end closed the channel");
  if (msg.msg_flags & MSG_TRUNC) return Error::Invalid("message longer than expected");
  return static_cast<size_t>(n);
}

Status ReceiveExactly(int sock, void* data, size_t len, UniqueFd* fd) {
  size_t n = STASIS_TRY(ReceiveMessage(sock, data, len, fd));
  if (n != len) return Error::Invalid(fmt::format("message of {} bytes, expected {}", n, len));
  return Ok();
}

}  // namespace stasis::sys
