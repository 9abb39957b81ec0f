// An isolated session's dump and restore enter the session's network
// namespace only for the steps that need it: the calling thread must be in
// its own namespace whenever they hand control back, after success and
// after failure, since an agent runs several operations in one process.
// Real namespaces, links and bridge (needs root); each test removes them.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <optional>

#include "net/isolated_net.h"
#include "net/session_dump.h"
#include "net/session_image.h"
#include "net/session_restore.h"

namespace stasis::net {
namespace {

ino_t ThreadNetns() {
  struct stat st = {};
  EXPECT_EQ(stat("/proc/thread-self/ns/net", &st), 0);
  return st.st_ino;
}

// Each test has a bridge of its own: ctest runs them at once, and each
// deletes its bridge at the end.
NetConfig Planned(const char* cidr, const char* bridge) {
  Result<NetConfig> net = PlanNet(cidr, bridge, {});
  EXPECT_TRUE(net.ok());
  return *net;
}

// Removes the test's bridge and session link, whatever the test left.
struct NetCleanup {
  const NetConfig& net;
  ~NetCleanup() {
    (void)DeleteHostLink(net.host_link);
    (void)DeleteHostLink(net.bridge);
  }
};

// A process living in `netns`: the session's init and root, as a dump sees
// them. Killed and reaped on destruction.
class ProcessIn {
 public:
  explicit ProcessIn(int netns) {
    pid_ = fork();
    if (pid_ == 0) {
      if (setns(netns, CLONE_NEWNET) < 0) _exit(1);
      for (;;) pause();
    }
  }
  ~ProcessIn() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  pid_t pid() const { return pid_; }
  // True once the process has left the caller's namespace.
  bool Moved(ino_t from) const {
    for (int i = 0; i < 1000; ++i) {
      struct stat st = {};
      std::string path = "/proc/" + std::to_string(pid_) + "/ns/net";
      if (stat(path.c_str(), &st) == 0 && st.st_ino != from) return true;
      usleep(1000);
    }
    return false;
  }

 private:
  pid_t pid_;
};

// A session's network (a bridge of its own, see Planned) with its init in
// it; everything removed on destruction, the process first.
struct SessionWithInit {
  SessionWithInit(const char* cidr, const char* bridge)
      : config(Planned(cidr, bridge)),
        cleanup{config},
        own(ThreadNetns()),
        net(IsolatedNet::Create(&config, /*host_up=*/true)) {
    if (net.ok()) init.emplace(net->netns_fd());
  }
  NetConfig config;
  NetCleanup cleanup;
  ino_t own;  // the caller's namespace
  Result<IsolatedNet> net;
  std::optional<ProcessIn> init;
};

TEST(SessionNetns, RestoreEntersOnlyAroundItsSteps) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root";
  NetConfig config = Planned("198.18.91.2/24", "stnstest1");
  NetCleanup cleanup{config};
  image::Manifest manifest;
  NetToProto(config, manifest.mutable_net());
  MemoryLogger log;
  ino_t own = ThreadNetns();

  Result<SessionNetRestore> net = SessionNetRestore::Build(manifest, /*new_pid_ns=*/true, log);
  ASSERT_TRUE(net.ok()) << net.error().ToString();
  EXPECT_EQ(ThreadNetns(), own);

  Result<ino_t> inside = net->Inside([]() -> Result<ino_t> { return ThreadNetns(); });
  ASSERT_TRUE(inside.ok());
  EXPECT_NE(*inside, own);
  EXPECT_EQ(ThreadNetns(), own);

  // A step that fails inside: the thread still comes back.
  Status failed = net->Inside([]() -> Status { return Error::Invalid("a failing step"); });
  EXPECT_FALSE(failed.ok());
  EXPECT_EQ(ThreadNetns(), own);

  // The link comes up from inside the session's namespace, as the restore
  // does it (its keeper is asked from the restorer's own namespace).
  Status up = net->Inside([&] {
    Status s = net->LinkUp();
    EXPECT_EQ(ThreadNetns(), *inside);
    return s;
  });
  EXPECT_TRUE(up.ok()) << up.error().ToString();
  EXPECT_EQ(ThreadNetns(), own);
  net->DownUnlessCommitted();
  EXPECT_EQ(ThreadNetns(), own);
}

TEST(SessionNetns, RestoreRefusesTheHostPidNamespaceWithoutEnteringAnything) {
  NetConfig config = Planned("198.18.92.2/24", "stnstest2");
  image::Manifest manifest;
  NetToProto(config, manifest.mutable_net());
  MemoryLogger log;
  ino_t own = ThreadNetns();
  Result<SessionNetRestore> net = SessionNetRestore::Build(manifest, /*new_pid_ns=*/false, log);
  EXPECT_FALSE(net.ok());
  EXPECT_EQ(ThreadNetns(), own);
}

TEST(SessionNetns, DumpLocksAndEntersOnlyAroundItsSteps) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root";
  SessionWithInit session("198.18.93.2/24", "stnstest3");
  ASSERT_TRUE(session.net.ok()) << session.net.error().ToString();
  ASSERT_TRUE(session.init->Moved(session.own));
  MemoryLogger log;
  {
    Result<SessionNetDump> dump =
        SessionNetDump::Begin(session.init->pid(), session.init->pid(), session.config, log);
    ASSERT_TRUE(dump.ok()) << dump.error().ToString();
    Status locked = dump->Lock();
    ASSERT_TRUE(locked.ok()) << locked.error().ToString();
    EXPECT_EQ(ThreadNetns(), session.own);
    {
      Result<sys::ScopedNetns> inside = dump->Enter();
      ASSERT_TRUE(inside.ok());
      EXPECT_NE(ThreadNetns(), session.own);
    }
    EXPECT_EQ(ThreadNetns(), session.own);
    // The destruction of a dump that failed brings the link up again.
  }
  EXPECT_EQ(ThreadNetns(), session.own);
  for (const auto& [level, line] : log.lines()) {
    EXPECT_NE(level, LogLevel::kWarning) << line;
  }
}

TEST(SessionNetns, DumpOfAProcessOutsideTheSessionIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root";
  SessionWithInit session("198.18.94.2/24", "stnstest4");
  ASSERT_TRUE(session.net.ok()) << session.net.error().ToString();
  ASSERT_TRUE(session.init->Moved(session.own));
  MemoryLogger log;
  Result<SessionNetDump> dump =
      SessionNetDump::Begin(session.init->pid(), getpid(), session.config, log);
  EXPECT_FALSE(dump.ok());
  EXPECT_EQ(ThreadNetns(), session.own);
}

}  // namespace
}  // namespace stasis::net
