#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "kinds/unix_socket.h"
#include "kinds/unix_socket_internal.h"
#include "kinds/unix_socket_testing.h"

namespace stasis::kinds::unix_socket {
namespace {

using namespace test_support;  // NOLINT(build/namespaces): the test helpers

// --- pure helpers --------------------------------------------------------------

TEST(UnixSocketNames, SockaddrRoundTrips) {
  for (const std::string& name :
       {std::string("/run/x.sock"), Abstract("a"), std::string("\0with\0nul", 10), std::string()}) {
    sockaddr_un sa;
    socklen_t len;
    ASSERT_TRUE(ToSockaddr(name, &sa, &len));
    EXPECT_EQ(NameFromSockaddr(sa, len), name);
  }
  sockaddr_un sa;
  socklen_t len;
  EXPECT_FALSE(ToSockaddr(std::string(200, 'x'), &sa, &len));
}

TEST(UnixSocketNames, ShowsNamesForMessages) {
  EXPECT_EQ(ShowName(""), "(unnamed)");
  EXPECT_EQ(ShowName("/tmp/s"), "/tmp/s");
  EXPECT_EQ(ShowName(std::string("\0ab\x01", 4)), "@ab\\x01");
  uint64_t ino = 0;
  EXPECT_TRUE(ParseSocketLink("socket:[12345]", &ino));
  EXPECT_EQ(ino, 12345u);
  EXPECT_FALSE(ParseSocketLink("pipe:[1]", &ino));
  EXPECT_FALSE(ParseSocketLink("socket:[]", &ino));
  EXPECT_FALSE(ParseSocketLink("socket:[12x]", &ino));
}

// A SOCK_DIAG_BY_FAMILY reply as the kernel writes it.
std::string FakeReply() {
  std::string payload(sizeof(unix_diag_msg), '\0');
  unix_diag_msg msg = {};
  msg.udiag_family = AF_UNIX;
  msg.udiag_type = SOCK_STREAM;
  msg.udiag_state = TCP_LISTEN;
  msg.udiag_ino = 4242;
  std::memcpy(payload.data(), &msg, sizeof msg);
  auto attr = [&](uint16_t type, std::string value) {
    nlattr a = {static_cast<uint16_t>(NLA_HDRLEN + value.size()), type};
    std::string bytes(reinterpret_cast<char*>(&a), sizeof a);
    bytes += value;
    bytes.resize(NLA_ALIGN(bytes.size()), '\0');
    payload += bytes;
  };
  attr(UNIX_DIAG_NAME, std::string("/tmp/l.sock\0", 12));
  uint32_t icons[] = {7, 8};
  attr(UNIX_DIAG_ICONS, std::string(reinterpret_cast<char*>(icons), sizeof icons));
  unix_diag_rqlen rq = {2, 16};
  attr(UNIX_DIAG_RQLEN, std::string(reinterpret_cast<char*>(&rq), sizeof rq));
  attr(UNIX_DIAG_SHUTDOWN, std::string(1, '\x02'));
  uint32_t peer = 99;
  attr(UNIX_DIAG_PEER, std::string(reinterpret_cast<char*>(&peer), sizeof peer));
  nlmsghdr h = {static_cast<uint32_t>(NLMSG_HDRLEN + payload.size()), SOCK_DIAG_BY_FAMILY, 0, 1, 0};
  std::string out(reinterpret_cast<char*>(&h), sizeof h);
  out += payload;
  out.resize(NLMSG_ALIGN(out.size()), '\0');
  nlmsghdr done = {NLMSG_HDRLEN + sizeof(int), NLMSG_DONE, 0, 1, 0};
  out += std::string(reinterpret_cast<char*>(&done), sizeof done) + std::string(sizeof(int), '\0');
  return out;
}

TEST(UnixSocketDiag, ParsesAReply) {
  DiagTable table;
  bool done = false;
  Status s = ParseDiagReply(FakeReply(), &table, &done);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_TRUE(done);
  ASSERT_TRUE(table.contains(4242));
  const DiagEntry& e = table.at(4242);
  EXPECT_EQ(e.type, SOCK_STREAM);
  EXPECT_EQ(e.state, TCP_LISTEN);
  EXPECT_EQ(e.name, "/tmp/l.sock");
  EXPECT_EQ(e.icons, (std::vector<uint64_t>{7, 8}));
  EXPECT_EQ(e.rqueue, 2u);
  EXPECT_EQ(e.wqueue, 16u);
  EXPECT_EQ(e.shutdown, 2);
  EXPECT_EQ(e.peer, 99u);
}

TEST(UnixSocketDiag, RejectsDamagedReplies) {
  std::string reply = FakeReply();
  DiagTable table;
  bool done = false;
  // An attribute running past its message.
  std::string bad = reply;
  nlattr a;
  size_t first_attr = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(unix_diag_msg));
  std::memcpy(&a, bad.data() + first_attr, sizeof a);
  a.nla_len = 4000;
  std::memcpy(bad.data() + first_attr, &a, sizeof a);
  EXPECT_EQ(ParseDiagReply(bad, &table, &done).error().code(), ErrorCode::kCorrupt);
  // A message longer than the buffer.
  EXPECT_FALSE(ParseDiagReply(reply.substr(0, 40), &table, &done).ok());
  // NLMSG_ERROR carries an errno.
  struct {
    nlmsghdr h;
    nlmsgerr e;
  } err = {};
  err.h = {sizeof err, NLMSG_ERROR, 0, 1, 0};
  err.e.error = -EPERM;
  Status s = ParseDiagReply(std::string(reinterpret_cast<char*>(&err), sizeof err), &table, &done);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().errnum(), EPERM);
}

TEST(UnixSocketDiag, ListsLiveSockets) {
  Pair p = MakePair(SOCK_STREAM);
  struct stat a, b;
  ASSERT_EQ(fstat(p.a.get(), &a), 0);
  ASSERT_EQ(fstat(p.b.get(), &b), 0);
  Result<DiagTable> table = DumpDiagTable();
  ASSERT_TRUE(table.ok()) << table.error().ToString();
  ASSERT_TRUE(table->contains(a.st_ino));
  EXPECT_EQ(table->at(a.st_ino).peer, b.st_ino);
  EXPECT_EQ(table->at(a.st_ino).state, TCP_ESTABLISHED);
}

// --- refusals --------------------------------------------------------------------

Error DumpError(const std::vector<int>& fds) {
  Result<std::vector<image::File>> files = DumpFds(fds);
  EXPECT_FALSE(files.ok());
  return files.ok() ? Error(ErrorCode::kFailed, "dump succeeded") : files.error();
}

TEST(UnixSocketRefusal, PeerOutsideTheTree) {
  Pair p = MakePair(SOCK_STREAM);
  struct stat st;
  ASSERT_EQ(fstat(p.b.get(), &st), 0);
  Error e = DumpError({p.a.get()});
  EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << e.ToString();
  EXPECT_NE(e.message().find(fmt::format("fd {}", p.a.get())), std::string::npos) << e.message();
  EXPECT_NE(e.message().find(fmt::format("socket:[{}]", st.st_ino)), std::string::npos);
  EXPECT_NE(e.message().find("outside the dumped tree"), std::string::npos);
}

// Data sent on a connection not accepted yet is read at the point of no
// return (a late step), and sent again by the restored client.
TEST(UnixSocketPending, DataSentOnAConnectionNotAcceptedYet) {
  std::string name = Abstract("backlog-data");
  sys::UniqueFd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  Bind(listener.get(), name);
  ASSERT_EQ(listen(listener.get(), 2), 0);
  sys::UniqueFd client(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  Connect(client.get(), name);
  ASSERT_EQ(send(client.get(), "early", 5, 0), 5);
  std::vector<LateStep> late;
  Result<std::vector<image::File>> files = DumpFds({listener.get(), client.get()}, &late);
  ASSERT_TRUE(files.ok()) << files.error().ToString();
  ASSERT_EQ(late.size(), 1u);
  EXPECT_NE(late[0].why.find("1 with data"), std::string::npos) << late[0].why;
  Result<image::LateRecord> record = late[0].run();
  ASSERT_TRUE(record.ok()) << record.error().ToString();
  late.clear();  // its duplicate of the listener, too
  listener.reset();
  client.reset();

  Result<std::vector<sys::UniqueFd>> restored = RestoreFiles(files.value());
  ASSERT_TRUE(restored.ok()) << restored.error().ToString();
  std::map<uint64_t, sys::UniqueFd> local;
  for (size_t i = 0; i < restored->size(); ++i) {
    local[files->at(i).id()] = sys::UniqueFd(fcntl((*restored)[i].get(), F_DUPFD_CLOEXEC, 0));
  }
  Status s = ApplyLate(LateRestore{&files.value(), &local}, record.value());
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  sys::UniqueFd accepted(accept4((*restored)[0].get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(accepted.valid());
  char buf[8];
  EXPECT_EQ(recv(accepted.get(), buf, sizeof buf, MSG_DONTWAIT), 5);
  EXPECT_EQ(std::string(buf, 5), "early");
}

TEST(UnixSocketRefusal, FdsInFlight) {
  Pair p = MakePair(SOCK_DGRAM);
  ASSERT_EQ(fd_testing::SendByteWithFd(p.a.get(), p.a.get()), 1);
  Error e = DumpError({p.a.get(), p.b.get()});
  EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << e.ToString();
  EXPECT_NE(e.message().find("SCM_RIGHTS"), std::string::npos) << e.message();
  // Still there for the task.
  EXPECT_EQ(Recv(p.b.get()), "x");
}

TEST(UnixSocketRefusal, OutOfBandByte) {
  Pair p = MakePair(SOCK_STREAM);
  ASSERT_EQ(send(p.a.get(), "!", 1, MSG_OOB), 1);
  Error e = DumpError({p.a.get(), p.b.get()});
  EXPECT_NE(e.message().find("MSG_OOB"), std::string::npos) << e.ToString();
}

TEST(UnixSocketRestore, RejectsAnIncompleteGraph) {
  image::UnixSocketGraph graph;
  image::UnixSocketNode* n = graph.add_nodes();
  n->set_ino(1);
  n->set_type(SOCK_STREAM);
  n->set_peer(2);
  Status s = ValidateGraph(graph);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kCorrupt);
  n->set_peer(0);
  n->set_type(SOCK_RAW);
  EXPECT_FALSE(ValidateGraph(graph).ok());
}

}  // namespace
}  // namespace stasis::kinds::unix_socket
