// A dump for another machine (DumpPolicy::moving_host) refuses the sockets
// whose peer is outside the tree, before anything of them is changed, and
// keeps those whose both ends are in it (tcp_socket.cc, udp_socket.cc).
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "kinds/kind_testing.h"
#include "kinds/tcp_socket.h"
#include "kinds/udp_socket.h"

namespace stasis::kinds {
namespace {

using fd_testing::InputFor;

sockaddr_in Loopback(uint16_t port) {
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  return a;
}

uint16_t PortOf(int fd, bool peer = false) {
  sockaddr_in a = {};
  socklen_t len = sizeof a;
  int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len)
               : getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  EXPECT_EQ(r, 0);
  return ntohs(a.sin_port);
}

sys::UniqueFd Socket(int type) { return sys::UniqueFd(socket(AF_INET, type | SOCK_CLOEXEC, 0)); }

// A loopback connection: a listener, the client and the accepted end.
struct Connection {
  sys::UniqueFd listener = Socket(SOCK_STREAM);
  sys::UniqueFd client = Socket(SOCK_STREAM);
  sys::UniqueFd server;

  Connection() {
    sockaddr_in a = Loopback(0);
    EXPECT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(listen(listener.get(), 4), 0);
    a.sin_port = htons(PortOf(listener.get()));
    EXPECT_EQ(connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    server.reset(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    EXPECT_TRUE(server.valid());
  }
};

// The dump's view of a tree holding `fds`, for another machine.
struct Tree {
  std::vector<std::unique_ptr<FdDumpInput>> inputs;
  DumpContext ctx;

  explicit Tree(const std::vector<int>& fds) {
    ctx.policy.moving_host = true;
    for (int fd : fds) {
      inputs.push_back(std::make_unique<FdDumpInput>(InputFor(fd)));
      ctx.inputs.push_back(inputs.back().get());
    }
  }
  ~Tree() {
    for (auto& undo : ctx.undo_if_kept) undo();
  }
};

TEST(MovingHostTest, TcpConnectionToAnOutsidePeerIsRefusedNamingIt) {
  Connection c;
  Tree tree({c.server.get()});
  Result<std::vector<sys::TcpFlow>> flows = tcp_socket::Flows(tree.ctx, *tree.inputs[0]);
  ASSERT_FALSE(flows.ok());
  EXPECT_EQ(flows.error().code(), ErrorCode::kUnsupported);
  std::string want = fmt::format(
      "tcp socket 127.0.0.1:{} -> 127.0.0.1:{} (pid {} fd {}): its peer is outside the tree and "
      "its address cannot move to another machine; run the program in a session with "
      "--net=isolated",
      PortOf(c.server.get()), PortOf(c.client.get()), getpid(), c.server.get());
  EXPECT_EQ(flows.error().ToString(), want);

  // The dump refuses it too (a handshake ended after the flows were
  // declared), before the socket is put in repair mode.
  image::File file;
  Status dumped = tcp_socket::Dump(tree.ctx, *tree.inputs[0], &file);
  ASSERT_FALSE(dumped.ok());
  EXPECT_NE(dumped.error().ToString().find("its peer is outside the tree"), std::string::npos);
  EXPECT_TRUE(tree.ctx.undo_if_kept.empty());
  ASSERT_EQ(send(c.server.get(), "x", 1, 0), 1);
  char byte = 0;
  EXPECT_EQ(recv(c.client.get(), &byte, 1, 0), 1);
}

TEST(MovingHostTest, TcpConnectionWithBothEndsInTheTreeIsKept) {
  Connection c;
  Tree tree({c.listener.get(), c.client.get(), c.server.get()});
  for (const auto& in : tree.inputs) {
    Result<std::vector<sys::TcpFlow>> flows = tcp_socket::Flows(tree.ctx, *in);
    ASSERT_TRUE(flows.ok()) << flows.error().ToString();
    EXPECT_TRUE(flows->empty());
    image::File file;
    Status dumped = tcp_socket::Dump(tree.ctx, *in, &file);
    EXPECT_TRUE(dumped.ok()) << dumped.error().ToString();
  }
}

TEST(MovingHostTest, WithoutThePolicyAnOutsidePeerIsAFlowToLock) {
  Connection c;
  Tree tree({c.server.get()});
  tree.ctx.policy.moving_host = false;
  Result<std::vector<sys::TcpFlow>> flows = tcp_socket::Flows(tree.ctx, *tree.inputs[0]);
  ASSERT_TRUE(flows.ok()) << flows.error().ToString();
  EXPECT_EQ(flows->size(), 1u);
}

TEST(MovingHostTest, UdpConnectedToAnOutsidePeerIsRefused) {
  sys::UniqueFd outside = Socket(SOCK_DGRAM);
  sockaddr_in a = Loopback(0);
  ASSERT_EQ(bind(outside.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  a.sin_port = htons(PortOf(outside.get()));
  sys::UniqueFd connected = Socket(SOCK_DGRAM);
  ASSERT_EQ(connect(connected.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  Tree tree({connected.get()});
  image::File file;
  Status dumped = udp_socket::Dump(tree.ctx, *tree.inputs[0], &file);
  ASSERT_FALSE(dumped.ok());
  EXPECT_EQ(dumped.error().code(), ErrorCode::kUnsupported);
  std::string want =
      fmt::format("udp socket 127.0.0.1:{} -> 127.0.0.1:{} (pid {} fd {})", PortOf(connected.get()),
                  ntohs(a.sin_port), getpid(), connected.get());
  EXPECT_EQ(dumped.error().ToString().rfind(want, 0), 0u) << dumped.error().ToString();
}

TEST(MovingHostTest, UdpPeerBoundInTheTreeAndUnconnectedUdpAreKept) {
  // The tree's server is bound to the wildcard address; its client sends to
  // it through loopback.
  sys::UniqueFd server = Socket(SOCK_DGRAM);
  sockaddr_in any = {};
  any.sin_family = AF_INET;
  ASSERT_EQ(bind(server.get(), reinterpret_cast<sockaddr*>(&any), sizeof any), 0);
  sockaddr_in to = Loopback(PortOf(server.get()));
  sys::UniqueFd client = Socket(SOCK_DGRAM);
  ASSERT_EQ(connect(client.get(), reinterpret_cast<sockaddr*>(&to), sizeof to), 0);
  Tree tree({server.get(), client.get()});
  for (const auto& in : tree.inputs) {
    image::File file;
    Status dumped = udp_socket::Dump(tree.ctx, *in, &file);
    EXPECT_TRUE(dumped.ok()) << dumped.error().ToString();
  }
}

}  // namespace
}  // namespace stasis::kinds
