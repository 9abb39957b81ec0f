// Connections waiting in a listener's queue (tcp_pending.cc,
// unix_socket_pending.cc): the late steps read real queues, and the late
// records refill real ones; records that do not fit the image are refused.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "kinds/kind_testing.h"
#include "kinds/tcp_pending.h"
#include "kinds/unix_socket.h"
#include "kinds/unix_socket_internal.h"
#include "tcp_pending.pb.h"
#include "tcp_socket.pb.h"
#include "unix_socket.pb.h"

namespace stasis::kinds {
namespace {

using fd_testing::InputFor;

// --- unix ---------------------------------------------------------------------

struct UnixListener {
  sys::UniqueFd fd;
  sockaddr_un addr = {};
  socklen_t len = 0;
};

UnixListener ListenUnix(int type) {
  UnixListener l;
  l.fd.reset(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  l.addr.sun_family = AF_UNIX;
  std::string name = "stasis-pending-test-" + std::to_string(getpid()) + "-" + std::to_string(type);
  std::memcpy(l.addr.sun_path + 1, name.data(), name.size());
  l.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  EXPECT_EQ(bind(l.fd.get(), reinterpret_cast<sockaddr*>(&l.addr), l.len), 0);
  EXPECT_EQ(listen(l.fd.get(), 4), 0);
  return l;
}

sys::UniqueFd ConnectUnix(const UnixListener& l, int type) {
  sys::UniqueFd fd(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  EXPECT_EQ(connect(fd.get(), reinterpret_cast<const sockaddr*>(&l.addr), l.len), 0);
  return fd;
}

uint64_t Ino(int fd) {
  struct stat st;
  EXPECT_EQ(fstat(fd, &st), 0);
  return st.st_ino;
}

TEST(PendingTest, UnixLateStepReadsWhatWaitingClientsSent) {
  UnixListener l = ListenUnix(SOCK_SEQPACKET);
  sys::UniqueFd quiet = ConnectUnix(l, SOCK_SEQPACKET);
  sys::UniqueFd talker = ConnectUnix(l, SOCK_SEQPACKET);
  ASSERT_EQ(send(talker.get(), "one", 3, 0), 3);
  ASSERT_EQ(send(talker.get(), "", 0, 0), 0);
  image::UnixSocketNode a, b;
  a.set_ino(Ino(quiet.get()));
  b.set_ino(Ino(talker.get()));
  b.set_late_queue(true);
  b.set_shutdown(2);
  DumpContext ctx;
  std::vector<unix_socket::PendingListener> listeners;
  listeners.push_back({Ino(l.fd.get()),
                       SOCK_SEQPACKET,
                       sys::UniqueFd(fcntl(l.fd.get(), F_DUPFD_CLOEXEC, 0)),
                       {&a, &b},
                       "listener"});
  unix_socket::AddPendingStep(ctx, std::move(listeners));
  ASSERT_EQ(ctx.late.size(), 1u);
  EXPECT_NE(ctx.late[0].why.find("2 unix connection(s)"), std::string::npos) << ctx.late[0].why;
  Result<image::LateRecord> record = ctx.late[0].run();
  ASSERT_TRUE(record.ok()) << record.error().ToString();
  image::UnixPendingData data;
  ASSERT_TRUE(record.value().state().UnpackTo(&data));
  ASSERT_EQ(data.connections_size(), 2);
  EXPECT_EQ(data.connections(0).client(), a.ino());
  EXPECT_EQ(data.connections(0).queue_size(), 0);
  EXPECT_EQ(data.connections(1).client(), b.ino());
  EXPECT_EQ(data.connections(1).client_shutdown(), 2u);
  ASSERT_EQ(data.connections(1).queue_size(), 2);  // boundaries, the empty message too
  EXPECT_EQ(data.connections(1).queue(0).data(), "one");
  EXPECT_EQ(data.connections(1).queue(1).data(), "");
}

TEST(PendingTest, UnixFdsInFlightOnAWaitingConnectionAreRefused) {
  UnixListener l = ListenUnix(SOCK_STREAM);
  EXPECT_TRUE(unix_socket::CheckNoFdsWaiting(getpid(), l.fd.get(), "l").ok());
  sys::UniqueFd client = ConnectUnix(l, SOCK_STREAM);
  ASSERT_EQ(fd_testing::SendByteWithFd(client.get(), 0), 1);
  Status s = unix_socket::CheckNoFdsWaiting(getpid(), l.fd.get(), "l");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(s.error().message().find("SCM_RIGHTS"), std::string::npos);
}

image::File UnixFile(uint64_t id, uint64_t ino) {
  image::UnixSocketState state;
  state.set_ino(ino);
  image::File f;
  f.set_id(id);
  f.set_kind(unix_socket::kName);
  f.mutable_state()->PackFrom(state);
  return f;
}

TEST(PendingTest, UnixLateRecordIsSentAgainByTheClient) {
  UnixListener l = ListenUnix(SOCK_STREAM);
  sys::UniqueFd client = ConnectUnix(l, SOCK_STREAM);
  std::vector<image::File> files = {UnixFile(1, 777)};
  std::map<uint64_t, sys::UniqueFd> local;
  local[1] = sys::UniqueFd(fcntl(client.get(), F_DUPFD_CLOEXEC, 0));
  image::UnixPendingData data;
  image::UnixPendingConnection* c = data.add_connections();
  c->set_client(777);
  c->set_type(SOCK_STREAM);
  c->set_client_shutdown(2);  // SEND_SHUTDOWN
  c->add_queue()->set_data("hello ");
  c->add_queue()->set_data("again");
  image::LateRecord record;
  record.set_kind(unix_socket::kName);
  record.mutable_state()->PackFrom(data);
  Status s = unix_socket::ApplyLate(LateRestore{&files, &local}, record);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  sys::UniqueFd accepted(accept4(l.fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(accepted.valid());
  char buf[32];
  EXPECT_EQ(recv(accepted.get(), buf, sizeof buf, MSG_WAITALL), 11);
  EXPECT_EQ(std::string(buf, 11), "hello again");
  EXPECT_EQ(recv(accepted.get(), buf, sizeof buf, 0), 0);  // then the client's shutdown

  c->set_client(778);
  record.mutable_state()->PackFrom(data);
  s = unix_socket::ApplyLate(LateRestore{&files, &local}, record);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kCorrupt);
}

// --- TCP ----------------------------------------------------------------------

std::string Sockname(int fd, bool peer = false) {
  sockaddr_storage ss = {};
  socklen_t len = sizeof ss;
  int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
               : getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  EXPECT_EQ(r, 0);
  return std::string(reinterpret_cast<const char*>(&ss), len);
}

sys::UniqueFd ListenTcp() {
  sys::UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(listen(fd.get(), 4), 0);
  return fd;
}

TEST(PendingTest, TcpAcceptQueueIsMatchedAndRead) {
  sys::UniqueFd listener = ListenTcp();
  std::string addr = Sockname(listener.get());
  sys::UniqueFd c1(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sys::UniqueFd c2(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(connect(c1.get(), reinterpret_cast<const sockaddr*>(addr.data()), addr.size()), 0);
  ASSERT_EQ(connect(c2.get(), reinterpret_cast<const sockaddr*>(addr.data()), addr.size()), 0);
  ASSERT_EQ(send(c2.get(), "queued", 6, 0), 6);
  usleep(20000);
  FdDumpInput in_l = InputFor(listener.get()), in_1 = InputFor(c1.get()), in_2 = InputFor(c2.get());
  DumpContext ctx;
  ctx.inputs = {&in_l, &in_1, &in_2};
  Result<bool> waits =
      tcp_pending::WaitsInAcceptQueue(ctx, in_2, Sockname(c2.get()), Sockname(c2.get(), true));
  ASSERT_TRUE(waits.ok()) << waits.error().ToString();
  EXPECT_TRUE(waits.value());
  Status s = tcp_pending::DumpListener(ctx, in_l, addr, 2);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  ASSERT_EQ(ctx.late.size(), 1u);
  Result<image::LateRecord> record = ctx.late[0].run();
  ASSERT_TRUE(record.ok()) << record.error().ToString();
  image::TcpPendingQueue queue;
  ASSERT_TRUE(record.value().state().UnpackTo(&queue));
  EXPECT_EQ(queue.listener(), addr);
  ASSERT_EQ(queue.connections_size(), 2);
  EXPECT_EQ(queue.connections(0).client_local(), Sockname(c1.get()));  // accept order
  EXPECT_EQ(queue.connections(0).data(), "");
  EXPECT_EQ(queue.connections(1).client_local(), Sockname(c2.get()));
  EXPECT_EQ(queue.connections(1).client_peer(), addr);
  EXPECT_EQ(queue.connections(1).data(), "queued");
}

TEST(PendingTest, TcpQueueWithAClientOutsideIsRefused) {
  sys::UniqueFd listener = ListenTcp();
  std::string addr = Sockname(listener.get());
  sys::UniqueFd c(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(connect(c.get(), reinterpret_cast<const sockaddr*>(addr.data()), addr.size()), 0);
  usleep(20000);
  FdDumpInput in_l = InputFor(listener.get());
  DumpContext ctx;
  ctx.inputs = {&in_l};  // the client is not in the tree
  Status s = tcp_pending::DumpListener(ctx, in_l, addr, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(s.error().message().find("outside the dumped tree"), std::string::npos);
  EXPECT_TRUE(ctx.late.empty());
}

// TCP_DEFER_ACCEPT holds a connection without data as a request socket
// (SYN_RECV) on the listener while its client is already established.
TEST(PendingTest, TcpHandshakeInProgressIsRefused) {
  sys::UniqueFd listener = ListenTcp();
  int secs = 30;
  ASSERT_EQ(setsockopt(listener.get(), IPPROTO_TCP, TCP_DEFER_ACCEPT, &secs, sizeof secs), 0);
  std::string addr = Sockname(listener.get());
  sys::UniqueFd c(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(connect(c.get(), reinterpret_cast<const sockaddr*>(addr.data()), addr.size()), 0);
  usleep(20000);
  FdDumpInput in_l = InputFor(listener.get()), in_c = InputFor(c.get());
  DumpContext ctx;
  ctx.inputs = {&in_l, &in_c};
  Status s = tcp_pending::DumpListener(ctx, in_l, addr, 0);  // nothing queued yet
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(s.error().message().find("SYN_RECV"), std::string::npos) << s.error().message();
  Result<bool> waits =
      tcp_pending::WaitsInAcceptQueue(ctx, in_c, Sockname(c.get()), Sockname(c.get(), true));
  ASSERT_FALSE(waits.ok());
  EXPECT_NE(waits.error().message().find("SYN_RECV"), std::string::npos);
}

image::File TcpFile(uint64_t id, const image::TcpSocketState& s) {
  image::File f;
  f.set_id(id);
  f.set_kind("tcp");
  f.mutable_state()->PackFrom(s);
  return f;
}

TEST(PendingTest, TcpLateRecordReconnectsAndRefills) {
  sys::UniqueFd listener = ListenTcp();
  std::string addr = Sockname(listener.get());
  sys::UniqueFd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in any = {};
  any.sin_family = AF_INET;
  any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(client.get(), reinterpret_cast<sockaddr*>(&any), sizeof any), 0);
  image::TcpSocketState ls, cs;
  ls.set_state(TCP_LISTEN);
  ls.set_local(addr);
  cs.set_state(TCP_ESTABLISHED);
  cs.set_waits_in_accept_queue(true);
  cs.set_local(Sockname(client.get()));
  cs.set_peer(addr);
  // Its send queue starts one byte before the server end's rcv_nxt: that
  // byte ("b") was received and not acknowledged yet.
  cs.set_send_queue("bcd");
  cs.set_send_seq(1003);
  std::vector<image::File> files = {TcpFile(1, ls), TcpFile(2, cs)};
  std::map<uint64_t, sys::UniqueFd> local;
  local[1] = sys::UniqueFd(fcntl(listener.get(), F_DUPFD_CLOEXEC, 0));
  local[2] = sys::UniqueFd(fcntl(client.get(), F_DUPFD_CLOEXEC, 0));
  image::TcpPendingQueue queue;
  queue.set_listener(addr);
  image::TcpPendingConnection* c = queue.add_connections();
  c->set_client_local(cs.local());
  c->set_client_peer(addr);
  c->set_data("ab");
  c->set_recv_seq(1001);
  image::LateRecord record;
  record.set_kind("tcp");
  record.mutable_state()->PackFrom(queue);
  Status s = tcp_pending::ApplyLate(LateRestore{&files, &local}, record);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  sockaddr_storage peer = {};
  socklen_t plen = sizeof peer;
  sys::UniqueFd accepted(
      accept4(listener.get(), reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_CLOEXEC));
  ASSERT_TRUE(accepted.valid());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(&peer), plen), cs.local());
  char buf[16];
  EXPECT_EQ(recv(accepted.get(), buf, 4, MSG_WAITALL), 4);
  EXPECT_EQ(std::string(buf, 4), "abcd");

  // A server end past the client's whole send queue cannot be.
  sys::UniqueFd other(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(bind(other.get(), reinterpret_cast<sockaddr*>(&any), sizeof any), 0);
  cs.set_local(Sockname(other.get()));
  files[1] = TcpFile(2, cs);
  local[2] = sys::UniqueFd(fcntl(other.get(), F_DUPFD_CLOEXEC, 0));
  c->set_client_local(cs.local());
  c->set_recv_seq(1010);
  record.mutable_state()->PackFrom(queue);
  s = tcp_pending::ApplyLate(LateRestore{&files, &local}, record);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kCorrupt);
}

}  // namespace
}  // namespace stasis::kinds
