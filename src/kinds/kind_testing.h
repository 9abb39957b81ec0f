// For kinds' unit tests: an FdDumpInput for one of the test's own fds, built
// the way the checkpoint layer builds one for a task's fd.
#pragma once

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "kinds/context.h"
#include "sys/proc.h"

namespace stasis::kinds::fd_testing {

inline FdDumpInput InputFor(int fd) {
  FdDumpInput in;
  in.pid = getpid();
  in.fd = fd;
  in.local.reset(fcntl(fd, F_DUPFD_CLOEXEC, 0));
  EXPECT_EQ(fstat(in.local.get(), &in.st), 0);
  Result<std::string> link = sys::proc::ReadLink(fmt::format("/proc/self/fd/{}", fd));
  Result<std::string> text = sys::proc::ReadFile(fmt::format("/proc/self/fdinfo/{}", fd));
  EXPECT_TRUE(link.ok() && text.ok());
  if (!link.ok() || !text.ok()) return in;
  in.link = link.value();
  Result<sys::proc::FdInfo> info = sys::proc::ParseFdInfo(text.value());
  EXPECT_TRUE(info.ok()) << info.error().ToString();
  if (info.ok()) in.info = info.value();
  return in;
}

// Sends the one byte "x" on sock with fd attached as SCM_RIGHTS; returns what
// sendmsg returned.
inline ssize_t SendByteWithFd(int sock, int fd) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof fd)] = {};
  iovec iov = {const_cast<char*>("x"), 1};
  msghdr m = {};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof fd);
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  return sendmsg(sock, &m, 0);
}

}  // namespace stasis::kinds::fd_testing
