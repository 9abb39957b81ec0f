#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "kinds/unix_socket.h"
#include "kinds/unix_socket_internal.h"
#include "kinds/unix_socket_testing.h"

namespace stasis::kinds::unix_socket {
namespace {

using namespace test_support;  // NOLINT(build/namespaces): the test helpers

// --- round trips ---------------------------------------------------------------

TEST(UnixSocketRoundTrip, StreamPairKeepsDataCredsFlagsAndShutdown) {
  Pair p = MakePair(SOCK_STREAM);
  SetIntOpt(p.b.get(), SO_PASSCRED, 1);
  ASSERT_EQ(send(p.a.get(), "hello ", 6, 0), 6);
  ASSERT_EQ(send(p.a.get(), "world", 5, 0), 5);
  ASSERT_EQ(send(p.b.get(), "back", 4, 0), 4);
  ASSERT_EQ(shutdown(p.b.get(), SHUT_WR), 0);
  ASSERT_EQ(fcntl(p.a.get(), F_SETFL, O_NONBLOCK), 0);
  SetIntOpt(p.a.get(), SO_RCVLOWAT, 3);
  SetIntOpt(p.a.get(), SO_SNDBUFFORCE, 50000);

  Result<std::vector<image::File>> files = DumpFds({p.a.get(), p.b.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  // The dump left the task's queues and settings alone.
  EXPECT_EQ(IntOpt(p.b.get(), SO_PEEK_OFF), -1);
  EXPECT_EQ(IntOpt(p.a.get(), SO_PASSCRED), 0);
  EXPECT_EQ(Recv(p.b.get(), MSG_PEEK | MSG_DONTWAIT), "hello world");

  Result<std::vector<sys::UniqueFd>> r = RestoreFiles(files.value());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  int a = (*r)[0].get(), b = (*r)[1].get();
  EXPECT_EQ(IntOpt(b, SO_PASSCRED), 1);
  EXPECT_EQ(IntOpt(a, SO_RCVLOWAT), 3);
  EXPECT_EQ(IntOpt(a, SO_SNDBUF), IntOpt(p.a.get(), SO_SNDBUF));
  EXPECT_EQ(fcntl(a, F_GETFL) & O_NONBLOCK, O_NONBLOCK);
  EXPECT_EQ(fcntl(b, F_GETFL) & O_NONBLOCK, 0);
  // Credentials come with the data: uid and gid as sent.
  char buf[64];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
  iovec iov = {buf, sizeof buf};
  msghdr m = {};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  ASSERT_EQ(recvmsg(b, &m, MSG_DONTWAIT), 11);
  EXPECT_EQ(std::string(buf, 11), "hello world");
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(c->cmsg_type, SCM_CREDENTIALS);
  ucred cred;
  std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
  EXPECT_EQ(cred.uid, getuid());
  EXPECT_EQ(cred.gid, getgid());
  EXPECT_EQ(Recv(a), "back");
  EXPECT_EQ(Recv(a), "");  // b shut down its writing side
  EXPECT_EQ(send(b, "x", 1, MSG_NOSIGNAL), -1);
  EXPECT_EQ(errno, EPIPE);
  EXPECT_EQ(send(a, "still", 5, 0), 5);
  EXPECT_EQ(Recv(b), "still");
}

class UnixSocketMessages : public testing::TestWithParam<int> {};

TEST_P(UnixSocketMessages, KeepBoundariesBothWays) {
  int type = GetParam();
  Pair p = MakePair(type);
  const std::vector<std::string> to_b = {"one", "", std::string(100000, 'x'), "four!"};
  for (const std::string& s : to_b)
    ASSERT_EQ(send(p.a.get(), s.data(), s.size(), 0), ssize_t(s.size()));
  ASSERT_EQ(send(p.b.get(), "reply", 5, 0), 5);
  ASSERT_EQ(Recv(p.b.get(), MSG_PEEK | MSG_DONTWAIT), "one");  // the task peeked at the head
  if (type == SOCK_SEQPACKET) {
    ASSERT_EQ(shutdown(p.a.get(), SHUT_WR), 0);
  }

  Result<std::vector<image::File>> files = DumpFds({p.a.get(), p.b.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  p = {};  // the originals go, as after a dump
  Result<std::vector<sys::UniqueFd>> r = RestoreFiles(files.value());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  int a = (*r)[0].get(), b = (*r)[1].get();
  for (const std::string& s : to_b) {
    std::string got = Recv(b);
    EXPECT_TRUE(got == s) << "got " << got.size() << " bytes '" << got.substr(0, 40) << "', want "
                          << s.size() << " bytes '" << s.substr(0, 40) << "'";
  }
  EXPECT_EQ(Recv(b), type == SOCK_SEQPACKET ? "" : "<Resource temporarily unavailable>");
  EXPECT_EQ(Recv(a), "reply");
  EXPECT_EQ(IntOpt(b, SO_TYPE), type);
}

INSTANTIATE_TEST_SUITE_P(UnixTypes, UnixSocketMessages,
                         testing::Values(SOCK_DGRAM, SOCK_SEQPACKET));

TEST(UnixSocketRoundTrip, PeekOffsetIsKeptAndCarried) {
  Pair p = MakePair(SOCK_DGRAM);
  ASSERT_EQ(send(p.a.get(), "abc", 3, 0), 3);
  ASSERT_EQ(send(p.a.get(), "defg", 4, 0), 4);
  SetIntOpt(p.b.get(), SO_PEEK_OFF, 0);
  ASSERT_EQ(Recv(p.b.get(), MSG_PEEK | MSG_DONTWAIT), "abc");  // the task's offset is now 3
  Result<std::vector<image::File>> files = DumpFds({p.a.get(), p.b.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  EXPECT_EQ(IntOpt(p.b.get(), SO_PEEK_OFF), 3);
  EXPECT_EQ(Recv(p.b.get(), MSG_PEEK | MSG_DONTWAIT), "defg");
  Result<std::vector<sys::UniqueFd>> r = RestoreFiles(files.value());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(IntOpt((*r)[1].get(), SO_PEEK_OFF), 3);
  EXPECT_EQ(Recv((*r)[1].get(), MSG_PEEK | MSG_DONTWAIT), "defg");
}

// An empty datagram the task peeked at is marked "peeked", which a peek at
// an offset skips.
TEST(UnixSocketRoundTrip, EmptyDatagramTheTaskPeekedAt) {
  Pair p = MakePair(SOCK_DGRAM);
  ASSERT_EQ(send(p.a.get(), "", 0, 0), 0);
  ASSERT_EQ(send(p.a.get(), "x", 1, 0), 1);
  ASSERT_EQ(Recv(p.b.get(), MSG_PEEK | MSG_DONTWAIT), "");
  Result<std::vector<image::File>> files = DumpFds({p.a.get(), p.b.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  Result<std::vector<sys::UniqueFd>> r = RestoreFiles(files.value());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(Recv((*r)[1].get()), "");
  EXPECT_EQ(Recv((*r)[1].get()), "x");
  EXPECT_EQ(Recv(p.b.get()), "");
  EXPECT_EQ(Recv(p.b.get()), "x");
}

TEST(UnixSocketRoundTrip, UnconnectedSockets) {
  std::string name = Abstract("bound-only");
  sys::UniqueFd bound = Socket(SOCK_STREAM, name);
  sys::UniqueFd fresh = Socket(SOCK_SEQPACKET);
  sys::UniqueFd dgram = Socket(SOCK_DGRAM);
  Result<std::vector<image::File>> files = DumpFds({bound.get(), fresh.get(), dgram.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  bound = {};
  Result<std::vector<sys::UniqueFd>> r = RestoreFiles(files.value());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(NameOf((*r)[0].get(), false), name);
  EXPECT_EQ(IntOpt((*r)[0].get(), SO_ACCEPTCONN), 0);
  EXPECT_EQ(IntOpt((*r)[1].get(), SO_TYPE), SOCK_SEQPACKET);
  EXPECT_EQ(NameOf((*r)[2].get(), false), "");
  ASSERT_EQ(listen((*r)[0].get(), 1), 0);  // a bound socket can still become a listener
}

TEST(UnixSocketRoundTrip, PeerClosedWithDataLeft) {
  Pair p = MakePair(SOCK_STREAM);
  ASSERT_EQ(send(p.b.get(), "last words", 10, 0), 10);
  p.b.reset();
  Result<std::vector<image::File>> files = DumpFds({p.a.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  Result<std::vector<sys::UniqueFd>> r = RestoreFiles(files.value());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(Recv((*r)[0].get()), "last words");
  EXPECT_EQ(Recv((*r)[0].get()), "");
}

TEST(UnixSocketRoundTrip, ListenerBacklogAcceptedAndDatagramNames) {
  std::string lname = Abstract("listen"), dname = Abstract("dgram"), cname = Abstract("client");
  sys::UniqueFd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  Bind(listener.get(), lname);
  ASSERT_EQ(listen(listener.get(), 7), 0);
  sys::UniqueFd client(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  Connect(client.get(), lname);
  sys::UniqueFd accepted(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(accepted.valid());
  ASSERT_EQ(send(client.get(), "to server", 9, 0), 9);
  sys::UniqueFd waiting(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  Connect(waiting.get(), lname);
  sys::UniqueFd server(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  Bind(server.get(), dname);
  sys::UniqueFd dclient(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  Bind(dclient.get(), cname);
  Connect(dclient.get(), dname);
  ASSERT_EQ(send(dclient.get(), "ping", 4, 0), 4);

  Result<std::vector<image::File>> files = DumpFds(
      {listener.get(), client.get(), accepted.get(), waiting.get(), server.get(), dclient.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  listener = {}, client = {}, accepted = {}, waiting = {}, server = {}, dclient = {};
  Result<std::vector<sys::UniqueFd>> r = RestoreFiles(files.value());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  int l = (*r)[0].get(), c = (*r)[1].get(), acc = (*r)[2].get(), w = (*r)[3].get();
  int srv = (*r)[4].get(), dc = (*r)[5].get();
  EXPECT_EQ(NameOf(l, false), lname);
  EXPECT_EQ(NameOf(acc, false), lname);
  EXPECT_EQ(NameOf(c, true), lname);
  EXPECT_EQ(NameOf(c, false), "");
  EXPECT_EQ(IntOpt(l, SO_ACCEPTCONN), 1);
  EXPECT_EQ(Recv(acc), "to server");
  sys::UniqueFd again(accept4(l, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  ASSERT_TRUE(again.valid()) << strerror(errno);
  EXPECT_EQ(send(w, "late", 4, 0), 4);
  EXPECT_EQ(Recv(again.get()), "late");
  EXPECT_EQ(NameOf(srv, false), dname);
  EXPECT_EQ(NameOf(dc, true), dname);
  sockaddr_un from;
  socklen_t len = sizeof from;
  char buf[16];
  ASSERT_EQ(recvfrom(srv, buf, sizeof buf, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &len),
            4);
  EXPECT_EQ(NameFromSockaddr(from, len), cname);
  EXPECT_EQ(send(dc, "pong?", 5, 0), 5);
  EXPECT_EQ(Recv(srv), "pong?");
}

TEST(UnixSocketRoundTrip, PathListenerOverItsStaleFile) {
  std::string dir = testing::TempDir() + fmt::format("unix-{}", getpid());
  std::filesystem::create_directories(dir);
  std::string path = dir + "/l.sock";
  unlink(path.c_str());
  sys::UniqueFd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  Bind(listener.get(), path);
  ASSERT_EQ(chmod(path.c_str(), 0640), 0);
  ASSERT_EQ(listen(listener.get(), 3), 0);
  sys::UniqueFd client(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  Connect(client.get(), path);
  sys::UniqueFd accepted(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_EQ(send(accepted.get(), "hi", 2, 0), 2);
  Result<std::vector<image::File>> files = DumpFds({listener.get(), client.get(), accepted.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  // The original still holds the path: the restore must refuse to take it.
  Result<std::vector<sys::UniqueFd>> busy = RestoreFiles(files.value());
  ASSERT_FALSE(busy.ok());
  EXPECT_NE(busy.error().message().find("live socket"), std::string::npos)
      << busy.error().ToString();
  listener = {}, client = {}, accepted = {};
  Result<std::vector<sys::UniqueFd>> r = RestoreFiles(files.value());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(NameOf((*r)[2].get(), false), path);
  EXPECT_EQ(NameOf((*r)[1].get(), true), path);
  EXPECT_EQ(Recv((*r)[1].get()), "hi");
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  sys::UniqueFd another(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  Connect(another.get(), path);
  std::filesystem::remove_all(dir);
}

TEST(UnixSocketRoundTrip, DatagramServerWithClientsAndAGoneSender) {
  std::string server_name = Abstract("srv"), c1_name = Abstract("c1"), gone_name = Abstract("gone");
  sys::UniqueFd server = Socket(SOCK_DGRAM, server_name);
  sys::UniqueFd c1 = Socket(SOCK_DGRAM, c1_name);
  Connect(c1.get(), server_name);
  sys::UniqueFd c2 = Socket(SOCK_DGRAM);
  {
    sys::UniqueFd gone = Socket(SOCK_DGRAM, gone_name);
    ASSERT_EQ(send(c1.get(), "from c1", 7, 0), 7);
    SendTo(c2.get(), "from c2", server_name);
    SendTo(gone.get(), "from gone", server_name);
  }
  SendTo(server.get(), "reply", c1_name);
  Result<std::vector<image::File>> files = DumpFds({server.get(), c1.get(), c2.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  server = {}, c1 = {}, c2 = {};
  Result<std::vector<sys::UniqueFd>> r = RestoreFiles(files.value());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  int srv = (*r)[0].get(), one = (*r)[1].get(), two = (*r)[2].get();
  EXPECT_EQ(RecvFrom(srv), "from c1 from " + ShowName(c1_name));
  EXPECT_EQ(RecvFrom(srv), "from c2 from (unnamed)");
  EXPECT_EQ(RecvFrom(srv), "from gone from " + ShowName(gone_name));
  EXPECT_EQ(RecvFrom(one), "reply from " + ShowName(server_name));
  EXPECT_EQ(NameOf(one, true), server_name);
  EXPECT_EQ(NameOf(two, true), "<getpeername: ENOTCONN (Transport endpoint is not connected)>");
  // The stand-in sender let its name go.
  sys::UniqueFd again = Socket(SOCK_DGRAM, gone_name);
  EXPECT_EQ(send(one, "more", 4, 0), 4);
  EXPECT_EQ(RecvFrom(srv), "more from " + ShowName(c1_name));
}

TEST(UnixSocketRoundTrip, NamedDatagramPairWithAnEarlierStranger) {
  std::string a_name = Abstract("pa"), b_name = Abstract("pb");
  sys::UniqueFd a = Socket(SOCK_DGRAM, a_name), b = Socket(SOCK_DGRAM, b_name);
  sys::UniqueFd stranger = Socket(SOCK_DGRAM);
  SendTo(stranger.get(), "before", a_name);
  Connect(a.get(), b_name);
  Connect(b.get(), a_name);
  for (int i = 0; i < 20; ++i) ASSERT_EQ(send(b.get(), "to a", 4, 0), 4);  // past max_dgram_qlen
  Result<std::vector<image::File>> files = DumpFds({a.get(), b.get(), stranger.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  a = {}, b = {}, stranger = {};
  Result<std::vector<sys::UniqueFd>> r = RestoreFiles(files.value());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(RecvFrom((*r)[0].get()), "before from (unnamed)");
  for (int i = 0; i < 20; ++i) EXPECT_EQ(RecvFrom((*r)[0].get()), "to a from " + ShowName(b_name));
  EXPECT_EQ(NameOf((*r)[0].get(), true), b_name);
  EXPECT_EQ(NameOf((*r)[1].get(), true), a_name);
  // A connected datagram socket takes only its peer's messages.
  sys::UniqueFd other = Socket(SOCK_DGRAM);
  sockaddr_un sa;
  socklen_t len;
  ASSERT_TRUE(ToSockaddr(a_name, &sa, &len));
  EXPECT_EQ(sendto(other.get(), "x", 1, 0, reinterpret_cast<sockaddr*>(&sa), len), -1);
  EXPECT_EQ(errno, EPERM);
}

TEST(UnixSocketRoundTrip, DatagramConnectedToAClosedPeer) {
  std::string gone_name = Abstract("dead");
  sys::UniqueFd s = Socket(SOCK_DGRAM);
  {
    sys::UniqueFd peer = Socket(SOCK_DGRAM, gone_name);
    Connect(s.get(), gone_name);
  }
  Result<std::vector<image::File>> files = DumpFds({s.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  Result<std::vector<sys::UniqueFd>> r = RestoreFiles(files.value());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(NameOf((*r)[0].get(), true), gone_name);
  EXPECT_EQ(send((*r)[0].get(), "x", 1, MSG_DONTWAIT), -1);
  EXPECT_EQ(errno, ECONNREFUSED);
  EXPECT_EQ(send(s.get(), "x", 1, MSG_DONTWAIT), -1);
  EXPECT_EQ(errno, ECONNREFUSED);  // as the original does
}

TEST(UnixSocketRoundTrip, DeletedPathListenerKeepsItsBacklog) {
  std::string dir = testing::TempDir() + fmt::format("unix-del-{}", getpid());
  std::filesystem::create_directories(dir);
  std::string path = dir + "/gone.sock";
  unlink(path.c_str());
  sys::UniqueFd listener = Socket(SOCK_SEQPACKET, path);
  ASSERT_EQ(listen(listener.get(), 4), 0);
  sys::UniqueFd client = Socket(SOCK_SEQPACKET);
  Connect(client.get(), path);
  sys::UniqueFd accepted(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  sys::UniqueFd waiting = Socket(SOCK_SEQPACKET);
  Connect(waiting.get(), path);
  ASSERT_EQ(unlink(path.c_str()), 0);
  ASSERT_EQ(send(client.get(), "msg", 3, 0), 3);
  Result<std::vector<image::File>> files =
      DumpFds({listener.get(), client.get(), accepted.get(), waiting.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  listener = {}, client = {}, accepted = {}, waiting = {};
  // Something else took the path since: the restore must leave it there.
  sys::UniqueFd squatter = Socket(SOCK_DGRAM, path);
  Result<std::vector<sys::UniqueFd>> r = RestoreFiles(files.value());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  int l = (*r)[0].get(), acc = (*r)[2].get(), w = (*r)[3].get();
  EXPECT_EQ(NameOf(l, false), path);
  EXPECT_EQ(NameOf(acc, false), path);
  EXPECT_EQ(Recv(acc), "msg");
  Result<DiagTable> table = DumpDiagTable();
  ASSERT_TRUE(table.ok());
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_TRUE(FileInUse(table.value(), st.st_dev, st.st_ino));  // the squatter's, still bound
  sys::UniqueFd again(accept4(l, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  ASSERT_TRUE(again.valid()) << strerror(errno);
  EXPECT_EQ(send(w, "late", 4, 0), 4);
  EXPECT_EQ(Recv(again.get()), "late");
  squatter = {};
  std::filesystem::remove_all(dir);
}

TEST(UnixSocketRoundTrip, ClosedPeersOfAcceptedAndClientEnds) {
  std::string name = Abstract("lone");
  sys::UniqueFd listener = Socket(SOCK_STREAM, name);
  ASSERT_EQ(listen(listener.get(), 4), 0);
  sys::UniqueFd client = Socket(SOCK_STREAM);
  Connect(client.get(), name);
  sys::UniqueFd accepted(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  sys::UniqueFd client2 = Socket(SOCK_STREAM);
  Connect(client2.get(), name);
  sys::UniqueFd accepted2(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_EQ(send(client.get(), "to the accepted end", 19, 0), 19);
  ASSERT_EQ(send(accepted2.get(), "to the client", 13, 0), 13);
  client = {}, accepted2 = {}, listener = {};  // the listener is gone too
  Result<std::vector<image::File>> files = DumpFds({accepted.get(), client2.get()});
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  accepted = {}, client2 = {};
  Result<std::vector<sys::UniqueFd>> r = RestoreFiles(files.value());
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(NameOf((*r)[0].get(), false), name);
  EXPECT_EQ(Recv((*r)[0].get()), "to the accepted end");
  EXPECT_EQ(Recv((*r)[0].get()), "");
  EXPECT_EQ(NameOf((*r)[1].get(), true), name);
  EXPECT_EQ(Recv((*r)[1].get()), "to the client");
  EXPECT_EQ(Recv((*r)[1].get()), "");
  // Nothing holds the name after the restore.
  sys::UniqueFd again = Socket(SOCK_STREAM, name);
}

}  // namespace
}  // namespace stasis::kinds::unix_socket
