// --external-unix=close (unix_socket_graph.cc) and stand-ins bound to names
// another socket holds (unix_socket_standin.cc).
#include <sys/stat.h>

#include "kinds/unix_socket_testing.h"

namespace stasis::kinds::unix_socket {
namespace {

using namespace test_support;

Result<std::vector<image::File>> DumpClosing(const std::vector<int>& fds) {
  DumpContext ctx;
  ctx.policy.external_unix_close = true;
  for (int fd : fds) {
    FdDumpInput in = InputFor(fd);
    ctx.fd_index.push_back({in.pid, fd, in.link, in.info.flags});
  }
  std::vector<image::File> files;
  for (int fd : fds) {
    image::File& file = files.emplace_back();
    file.set_id(files.size());
    file.set_kind(kName);
    STASIS_TRY(Dump(ctx, InputFor(fd), &file));
  }
  return files;
}

const image::UnixSocketNode& FirstNode(const image::File& file) {
  static image::UnixSocketState state;
  EXPECT_TRUE(file.state().UnpackTo(&state));
  return state.graph().nodes(0);
}

TEST(UnixExternalClose, StreamPeerOutsideComesBackClosed) {
  Pair p = MakePair(SOCK_STREAM);
  ASSERT_EQ(send(p.b.get(), "queued", 6, 0), 6);
  Result<std::vector<image::File>> files = DumpClosing({p.a.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  const image::UnixSocketNode& n = FirstNode((*files)[0]);
  EXPECT_TRUE(n.peer_gone());
  EXPECT_TRUE(n.peer_outside());
  EXPECT_FALSE(n.peer_reset());  // the outside end had read everything
  Result<std::vector<sys::UniqueFd>> fds = RestoreFiles(*files);
  ASSERT_TRUE(fds.ok()) << fds.error().ToString();
  int fd = (*fds)[0].get();
  EXPECT_EQ(Recv(fd), "queued");
  EXPECT_EQ(Recv(fd), "");  // EOF
  EXPECT_EQ(send(fd, "x", 1, MSG_NOSIGNAL), -1);
  EXPECT_EQ(errno, EPIPE);
}

TEST(UnixExternalClose, UnreadDataOutsideMakesItAReset) {
  Pair p = MakePair(SOCK_STREAM);
  ASSERT_EQ(send(p.a.get(), "unread by the peer", 18, 0), 18);
  Result<std::vector<image::File>> files = DumpClosing({p.a.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  EXPECT_TRUE(FirstNode((*files)[0]).peer_reset());
  Result<std::vector<sys::UniqueFd>> fds = RestoreFiles(*files);
  ASSERT_TRUE(fds.ok()) << fds.error().ToString();
  EXPECT_EQ(Recv((*fds)[0].get()), "<" + std::string(strerror(ECONNRESET)) + ">");
  EXPECT_EQ(Recv((*fds)[0].get()), "");
}

TEST(UnixExternalClose, DatagramToAnAbstractNameStillHeld) {
  std::string name = Abstract("dgram-server");
  sys::UniqueFd server = Socket(SOCK_DGRAM, name);
  sys::UniqueFd client = Socket(SOCK_DGRAM);
  Connect(client.get(), name);
  Result<std::vector<image::File>> files = DumpClosing({client.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  EXPECT_EQ(FirstNode((*files)[0]).peer_name().name(), name);
  Result<std::vector<sys::UniqueFd>> fds = RestoreFiles(*files);
  ASSERT_TRUE(fds.ok()) << fds.error().ToString();
  int fd = (*fds)[0].get();
  EXPECT_EQ(send(fd, "x", 1, MSG_DONTWAIT), -1);
  EXPECT_EQ(errno, ECONNREFUSED);
  EXPECT_EQ(send(fd, "x", 1, MSG_DONTWAIT), -1);
  EXPECT_EQ(errno, ENOTCONN);
  // The live server never saw the stand-in.
  EXPECT_EQ(Recv(server.get()), "<" + std::string(strerror(EAGAIN)) + ">");
}

TEST(UnixStandIn, BindsAPathHeldByALiveSocketWithoutTouchingIt) {
  char dir[] = "/tmp/stasis-standin-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string path = std::string(dir) + "/sub/live.sock";
  ASSERT_EQ(mkdir((std::string(dir) + "/sub").c_str(), 0755), 0);
  sys::UniqueFd live = Socket(SOCK_STREAM, path);
  ASSERT_EQ(listen(live.get(), 1), 0);
  struct stat before, after;
  ASSERT_EQ(stat(path.c_str(), &before), 0);
  sys::UniqueFd stand_in = Socket(SOCK_STREAM);
  Result<Target> target = BindStandIn(stand_in.get(), path);
  ASSERT_TRUE(target.ok()) << target.error().ToString();
  ASSERT_EQ(listen(stand_in.get(), 1), 0);
  EXPECT_EQ(NameOf(stand_in.get(), false), path);
  ASSERT_EQ(stat(path.c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino);
  sys::UniqueFd client = Socket(SOCK_STREAM);
  sockaddr_un sa;
  socklen_t len = target->Address(&sa).value();
  ASSERT_EQ(connect(client.get(), reinterpret_cast<sockaddr*>(&sa), len), 0) << strerror(errno);
  EXPECT_EQ(NameOf(client.get(), true), path);
  sys::UniqueFd accepted(accept(stand_in.get(), nullptr, nullptr));
  EXPECT_TRUE(accepted.valid());
  ASSERT_EQ(fcntl(live.get(), F_SETFL, O_NONBLOCK), 0);
  sys::UniqueFd other(accept(live.get(), nullptr, nullptr));
  EXPECT_FALSE(other.valid());  // the live listener got nothing
  unlink(path.c_str());
  rmdir((std::string(dir) + "/sub").c_str());
  rmdir(dir);
}

}  // namespace
}  // namespace stasis::kinds::unix_socket
