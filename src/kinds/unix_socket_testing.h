// Helpers of the unix socket kind's unit tests: sockets made in the test
// process, dumped as if the process were the whole tree, restored in it.
#pragma once

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "kinds/kind_testing.h"
#include "kinds/unix_socket.h"
#include "kinds/unix_socket_internal.h"
#include "sys/proc.h"

namespace stasis::kinds::unix_socket::test_support {

using fd_testing::InputFor;

// Dumps fds as the checkpoint layer would for a tree holding exactly them.
// *late, when given, gets the steps the dump left for its point of no return.
inline Result<std::vector<image::File>> DumpFds(const std::vector<int>& fds,
                                                std::vector<LateStep>* late = nullptr) {
  DumpContext ctx;
  for (int fd : fds) {
    FdDumpInput in = InputFor(fd);
    ctx.fd_index.push_back({in.pid, fd, in.link, in.info.flags});
  }
  std::vector<image::File> files;
  for (int fd : fds) {
    FdDumpInput in = InputFor(fd);
    if (!Matches(in)) return Error::Invalid(fmt::format("fd {} does not match", fd));
    image::File& file = files.emplace_back();
    file.set_id(files.size());
    file.set_kind(kName);
    STASIS_TRY(Dump(ctx, in, &file));
  }
  if (late != nullptr) *late = std::move(ctx.late);
  return files;
}

inline Result<std::vector<sys::UniqueFd>> RestoreFiles(const std::vector<image::File>& files) {
  RestoreContext ctx;
  std::vector<sys::UniqueFd> out;
  for (const image::File& f : files) out.push_back(STASIS_TRY(Restore(ctx, f)));
  return out;
}

struct Pair {
  sys::UniqueFd a, b;
};
inline Pair MakePair(int type) {
  int sv[2];
  EXPECT_EQ(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), 0);
  return {sys::UniqueFd(sv[0]), sys::UniqueFd(sv[1])};
}

inline std::string Recv(int fd, int flags = MSG_DONTWAIT) {
  std::string buf(1 << 17, '\0');
  ssize_t n = recv(fd, buf.data(), buf.size(), flags);
  if (n < 0) return "<" + std::string(strerror(errno)) + ">";
  buf.resize(static_cast<size_t>(n));
  return buf;
}

inline int IntOpt(int fd, int opt) {
  int v = -7;
  socklen_t len = sizeof v;
  EXPECT_EQ(getsockopt(fd, SOL_SOCKET, opt, &v, &len), 0);
  return v;
}

inline void SetIntOpt(int fd, int opt, int v) {
  ASSERT_EQ(setsockopt(fd, SOL_SOCKET, opt, &v, sizeof v), 0);
}

inline std::string Abstract(const std::string& tag) {
  return std::string(1, '\0') + fmt::format("stasis-test-{}-{}", getpid(), tag);
}

inline void Bind(int fd, const std::string& name) {
  sockaddr_un sa;
  socklen_t len;
  ASSERT_TRUE(ToSockaddr(name, &sa, &len));
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&sa), len), 0) << strerror(errno);
}

inline void Connect(int fd, const std::string& name) {
  sockaddr_un sa;
  socklen_t len;
  ASSERT_TRUE(ToSockaddr(name, &sa, &len));
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&sa), len), 0) << strerror(errno);
}

inline std::string NameOf(int fd, bool peer) {
  Result<std::string> r = SockName(fd, peer);
  return r.ok() ? r.value() : "<" + r.error().ToString() + ">";
}

inline sys::UniqueFd Socket(int type, const std::string& name = "") {
  sys::UniqueFd fd(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(fd.valid());
  if (!name.empty()) Bind(fd.get(), name);
  return fd;
}

inline void SendTo(int fd, const std::string& data, const std::string& to) {
  sockaddr_un sa;
  socklen_t len;
  ASSERT_TRUE(ToSockaddr(to, &sa, &len));
  ASSERT_EQ(sendto(fd, data.data(), data.size(), 0, reinterpret_cast<sockaddr*>(&sa), len),
            ssize_t(data.size()))
      << strerror(errno);
}

// One datagram and its sender's name, as "data from name".
inline std::string RecvFrom(int fd) {
  char buf[256];
  sockaddr_un from = {};
  socklen_t len = sizeof from;
  ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &len);
  if (n < 0) return "<" + std::string(strerror(errno)) + ">";
  return std::string(buf, n) + " from " + ShowName(NameFromSockaddr(from, len));
}

}  // namespace stasis::kinds::unix_socket::test_support
