// DumpPolicy::moving_host through the dump's collection of a tree's fds
// (files_dump.cc): a tree without its own network is refused for a
// connection to a peer outside it; an isolated session (its flows covered by
// its link lock) is not, since its address moves with it.
#include "checkpoint/files_dump.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <vector>

#include "sys/log.h"
#include "sys/pidfds.h"
#include "sys/proc.h"
#include "sys/unique_fd.h"

namespace stasis::checkpoint {
namespace {

// A child holding one end of a loopback connection as its fd 3 (stdio on
// /dev/null, nothing else); the test holds the other end, outside its tree.
// Killed and reaped on destruction.
class ConnectedChild {
 public:
  ConnectedChild() {
    sys::UniqueFd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a = {};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    EXPECT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(listen(listener.get(), 1), 0);
    EXPECT_EQ(getsockname(listener.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
    sys::UniqueFd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    EXPECT_EQ(connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    outside_.reset(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    pid_ = fork();
    if (pid_ == 0) {
      int null_fd = open("/dev/null", O_RDWR);
      for (int fd = 0; fd < 3; ++fd) dup2(null_fd, fd);
      dup2(client.get(), 3);
      close_range(4, ~0u, 0);
      for (;;) pause();
    }
    // Ready once it holds only its own four fds, no longer the test's.
    for (int i = 0; i < 2000 && !Ready(); ++i) usleep(1000);
  }
  ~ConnectedChild() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  pid_t pid() const { return pid_; }
  int outside() const { return outside_.get(); }

 private:
  bool Ready() const {
    Result<std::vector<int>> fds = sys::proc::ListFds(pid_);
    Result<std::string> out = sys::proc::ReadLink("/proc/" + std::to_string(pid_) + "/fd/1");
    return fds.ok() && fds->size() == 4 && out.ok() && *out == "/dev/null";
  }

  sys::UniqueFd outside_;
  pid_t pid_ = 0;
};

struct Collected {
  Status status;
  std::vector<image::File> files;
};

// Collects the child's fds for a migration (moving_host), then puts back
// what the dump changed, as a dump whose tree keeps running does.
Collected CollectForMigration(pid_t pid, bool isolated_session) {
  NullLogger log;
  image::Process proc;
  std::vector<TreeFdsInput> tasks = {{pid, &proc}};
  std::vector<kinds::ContentSource> contents;
  std::vector<std::function<void()>> undo;
  std::vector<kinds::LateStep> late;
  kinds::DumpPolicy policy;
  policy.moving_host = true;
  FlowLocking locking{log, isolated_session};
  Collected c;
  c.status = CollectTreeFiles(tasks, &c.files, &contents, &undo, &late, policy, locking);
  for (auto it = undo.rbegin(); it != undo.rend(); ++it) (*it)();
  return c;
}

TEST(MovingHostDump, TreeWithoutItsOwnNetworkIsRefusedNamingTheConnection) {
  ConnectedChild child;
  ASSERT_GT(child.pid(), 0);
  Collected c = CollectForMigration(child.pid(), /*isolated_session=*/false);
  ASSERT_FALSE(c.status.ok());
  EXPECT_EQ(c.status.error().code(), ErrorCode::kUnsupported);
  std::string message = c.status.error().ToString();
  EXPECT_NE(message.find("(pid " + std::to_string(child.pid()) + " fd 3)"), std::string::npos)
      << message;
  EXPECT_NE(message.find("run the program in a session with --net=isolated"), std::string::npos)
      << message;
}

TEST(MovingHostDump, IsolatedSessionKeepsItsOutsideConnections) {
  ConnectedChild child;
  ASSERT_GT(child.pid(), 0);
  Collected c = CollectForMigration(child.pid(), /*isolated_session=*/true);
  ASSERT_TRUE(c.status.ok()) << c.status.error().ToString();
  bool tcp = false;
  for (const image::File& f : c.files) tcp = tcp || f.kind() == "tcp";
  EXPECT_TRUE(tcp);
  // Out of repair mode again: the connection still carries data.
  Result<sys::UniqueFd> pidfd = sys::PidfdOpen(child.pid());
  ASSERT_TRUE(pidfd.ok()) << pidfd.error().ToString();
  Result<sys::UniqueFd> theirs = sys::PidfdGetfd(pidfd->get(), child.pid(), 3);
  ASSERT_TRUE(theirs.ok()) << theirs.error().ToString();
  int repair = -1;
  socklen_t len = sizeof repair;
  ASSERT_EQ(getsockopt(theirs->get(), IPPROTO_TCP, TCP_REPAIR, &repair, &len), 0);
  EXPECT_EQ(repair, 0);
  ASSERT_EQ(send(child.outside(), "x", 1, 0), 1);
  char byte = 0;
  EXPECT_EQ(recv(theirs->get(), &byte, 1, 0), 1);
  EXPECT_EQ(byte, 'x');
}

}  // namespace
}  // namespace stasis::checkpoint
