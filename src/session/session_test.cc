#include "session/session.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "session/init.h"
#include "session/json.h"
#include "sys/proc.h"

namespace stasis::session {
namespace {

namespace fs = std::filesystem;

class SessionStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/stasis-session-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A session whose "init" is this test process: alive for the whole test.
  SessionInfo Alive(const std::string& name) {
    SessionInfo info;
    info.name = name;
    info.init_pid = getpid();
    info.init_start_time = ProcessStartTime(getpid()).value();
    info.root_pid = getpid();
    info.command = {"sleep", "1 000"};
    info.created_unix = 1700000000;
    return info;
  }
  // A session whose init has exited.
  SessionInfo Gone(const std::string& name) {
    SessionInfo info = Alive(name);
    pid_t child = fork();
    if (child == 0) _exit(0);
    waitpid(child, nullptr, 0);
    info.init_pid = child;
    return info;
  }

  std::string dir_;
  MemoryLogger log_;
};

TEST(SessionNameTest, Validates) {
  const std::string longest(64, 'x');
  const std::string too_long(65, 'x');
  for (const std::string& good : {std::string("a"), std::string("web-1"), std::string("s-4242"),
                                  std::string("A.b_c"), longest}) {
    EXPECT_TRUE(ValidateName(good).ok()) << good;
  }
  for (const std::string& bad :
       {std::string(""), std::string(".hidden"), std::string("-flag"), std::string("a/b"),
        std::string(".."), std::string("sp ace"), std::string("ü"), too_long}) {
    EXPECT_FALSE(ValidateName(bad).ok()) << bad;
  }
}

TEST(SessionStateDirTest, FlagThenEnvThenDefault) {
  unsetenv(kStateDirEnv);
  EXPECT_EQ(ResolveStateDir(""), kDefaultStateDir);
  setenv(kStateDirEnv, "/tmp/from-env", 1);
  EXPECT_EQ(ResolveStateDir(""), "/tmp/from-env");
  EXPECT_EQ(ResolveStateDir("/tmp/flag"), "/tmp/flag");
  unsetenv(kStateDirEnv);
}

TEST(SessionJsonTest, RoundTrips) {
  SessionInfo info;
  info.name = "web";
  info.init_pid = 4242;
  info.init_start_time = 987654;
  info.root_pid = 4243;
  info.cgroup = "/sys/fs/cgroup/unified/stasis/web";
  info.command = {"python3", "-c", "print('hi there')"};
  info.created_unix = 1738324800;
  info.origin = "restore";
  info.image = "/images/web";
  std::string text = SessionToJson(info);
  EXPECT_NE(text.find("\"created\": \"2025-01-31T12:00:00Z\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"state\": \"running\""), std::string::npos) << text;
  auto back = SessionFromJson(text, "web.json");
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(back->name, info.name);
  EXPECT_EQ(back->init_pid, info.init_pid);
  EXPECT_EQ(back->init_start_time, info.init_start_time);
  EXPECT_EQ(back->root_pid, info.root_pid);
  EXPECT_EQ(back->cgroup, info.cgroup);
  EXPECT_EQ(back->command, info.command);
  EXPECT_EQ(back->created_unix, info.created_unix);
  EXPECT_EQ(back->origin, info.origin);
  EXPECT_EQ(back->image, info.image);
}

TEST(SessionJsonTest, RejectsDamage) {
  for (const char* bad : {"", "[]", "{\"version\": 1}", "{\"version\": 2, \"name\": \"a\"}",
                          "{\"version\": 1, \"name\": \"a\", \"init_pid\": \"x\"}",
                          "{\"version\": 1, \"name\": \"a\", \"init_pid\": 1, \"root_pid\": 2, "
                          "\"command\": [1]}",
                          "{\"version\": 1, \"name\": "}) {
    auto info = SessionFromJson(bad, "x.json");
    ASSERT_FALSE(info.ok()) << bad;
    EXPECT_EQ(info.error().code(), ErrorCode::kCorrupt) << bad;
    EXPECT_NE(info.error().message().find("x.json"), std::string::npos);
  }
}

TEST(SessionInitMessageTest, SessionEndRoundTrips) {
  SessionEnd end{"/run/stasis/sessions",       "s-12",          12, 34,
                 "/sys/fs/cgroup/stasis/s-12", "/sys/fs/cgroup"};
  auto back = DecodeSessionEnd(EncodeSessionEnd(end));
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(back->state_dir, end.state_dir);
  EXPECT_EQ(back->name, end.name);
  EXPECT_EQ(back->init_pid, end.init_pid);
  EXPECT_EQ(back->init_start_time, end.init_start_time);
  EXPECT_EQ(back->cgroup, end.cgroup);
  EXPECT_EQ(back->cgroup_mount, end.cgroup_mount);
  EXPECT_FALSE(DecodeSessionEnd("{}").ok());
  EXPECT_FALSE(DecodeSessionEnd("garbage").ok());
}

TEST(SessionProcessTest, StartTimeTellsProcessesApart) {
  auto self = ProcessStartTime(getpid());
  ASSERT_TRUE(self.ok()) << self.error().ToString();
  auto init = ProcessStartTime(1);
  ASSERT_TRUE(init.ok());
  EXPECT_LE(*init, *self);
  EXPECT_EQ(ProcessStartTime(999999999).error().code(), ErrorCode::kNotFound);
}

TEST_F(SessionStoreTest, ListsFindsAndComputesState) {
  ASSERT_TRUE(WriteSessionMetadata(dir_, Alive("b-alive")).ok());
  ASSERT_TRUE(WriteSessionMetadata(dir_, Gone("a-gone")).ok());
  SessionInfo reused = Alive("c-reused");
  reused.init_start_time += 1;  // same PID, another process
  ASSERT_TRUE(WriteSessionMetadata(dir_, reused).ok());
  std::ofstream(dir_ + "/d-corrupt.json") << "{";
  std::ofstream(dir_ + "/not-a-session.txt") << "x";

  auto sessions = ListSessions(dir_, log_);
  ASSERT_TRUE(sessions.ok()) << sessions.error().ToString();
  ASSERT_EQ(sessions->size(), 3u) << "the corrupt file is skipped";
  EXPECT_EQ((*sessions)[0].name, "a-gone");
  EXPECT_EQ((*sessions)[0].state, SessionState::kGone);
  EXPECT_EQ((*sessions)[1].name, "b-alive");
  EXPECT_EQ((*sessions)[1].state, SessionState::kRunning);
  EXPECT_EQ((*sessions)[1].command, (std::vector<std::string>{"sleep", "1 000"}));
  EXPECT_EQ((*sessions)[2].state, SessionState::kGone);
  auto said = log_.lines();
  ASSERT_EQ(said.size(), 1u);
  EXPECT_EQ(said[0].first, LogLevel::kWarning);
  EXPECT_NE(said[0].second.find("d-corrupt"), std::string::npos) << said[0].second;

  auto found = FindSession(dir_, "b-alive");
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(found->root_pid, getpid());
  EXPECT_EQ(FindSession(dir_, "nope").error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(FindSession(dir_, "d-corrupt").error().code(), ErrorCode::kCorrupt);
  EXPECT_EQ(FindSession(dir_, "../etc").error().code(), ErrorCode::kInvalid);
  EXPECT_TRUE(ListSessions(dir_ + "/missing", log_)->empty());
}

TEST_F(SessionStoreTest, ClaimRefusesLiveNamesAndCleansGoneOnes) {
  ASSERT_TRUE(WriteSessionMetadata(dir_, Alive("busy")).ok());
  ASSERT_TRUE(WriteSessionMetadata(dir_, Gone("stale")).ok());
  auto lock = StateDirLock::Acquire(dir_);
  ASSERT_TRUE(lock.ok());
  Status busy = ClaimSessionName(dir_, "busy");
  ASSERT_FALSE(busy.ok());
  EXPECT_NE(busy.error().message().find("already running"), std::string::npos);
  EXPECT_TRUE(ClaimSessionName(dir_, "stale").ok());
  EXPECT_FALSE(fs::exists(dir_ + "/stale.json"));
  EXPECT_TRUE(ClaimSessionName(dir_, "fresh").ok());
  EXPECT_FALSE(CleanupSession(dir_, Alive("busy")).ok()) << "a running session is not cleaned";
}

TEST_F(SessionStoreTest, MetadataIsRemovedOnlyForItsOwnInit) {
  SessionInfo mine = Alive("x");
  ASSERT_TRUE(WriteSessionMetadata(dir_, mine).ok());
  SessionInfo other = mine;
  other.init_pid += 1;
  EXPECT_TRUE(RemoveSessionMetadata(dir_, other).ok());
  EXPECT_TRUE(fs::exists(dir_ + "/x.json"));
  EXPECT_TRUE(RemoveSessionMetadata(dir_, mine).ok());
  EXPECT_FALSE(fs::exists(dir_ + "/x.json"));
}

TEST_F(SessionStoreTest, RegistersARestoredTreeInItsCgroup) {
  if (geteuid() != 0 || !sys::FindCgroup2Mount().ok()) GTEST_SKIP() << "needs root and cgroup2";
  // A stand-in for a restored tree: an "init" with one child.
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t init = fork();
  if (init == 0) {
    if (fork() == 0) {
      close(ready[0]);
      close(ready[1]);
      pause();
      _exit(0);
    }
    close(ready[0]);
    close(ready[1]);  // EOF: the child exists
    pause();
    _exit(0);
  }
  close(ready[1]);
  char byte;
  ASSERT_EQ(read(ready[0], &byte, 1), 0);
  close(ready[0]);
  // The grandchild closed its copy too, but may not be visible yet: wait.
  for (int i = 0; i < 100 && ProcessTree(init).size() < 2; ++i) usleep(10000);

  RestoredSession restored{"restored-" + std::to_string(getpid()),
                           init,
                           init,
                           {"app", "--x"},
                           "/images/app",
                           std::nullopt};
  auto info = RegisterRestoredSession(dir_, restored);
  ASSERT_TRUE(info.ok()) << info.error().ToString();
  EXPECT_EQ(info->origin, "restore");
  auto pids = SessionProcesses(*info);
  ASSERT_TRUE(pids.ok());
  EXPECT_EQ(*pids, ProcessTree(init));
  EXPECT_EQ(pids->size(), 2u);
  auto usage = MeasureSession(*info);
  ASSERT_TRUE(usage.ok());
  EXPECT_EQ(usage->processes, 2u);
  EXPECT_GT(usage->memory_bytes, 0u);
  EXPECT_FALSE(RegisterRestoredSession(dir_, restored).ok()) << "the name is taken";

  kill(init, SIGKILL);
  waitpid(init, nullptr, 0);
  auto gone = FindSession(dir_, restored.name);
  ASSERT_TRUE(gone.ok());
  EXPECT_EQ(gone->state, SessionState::kGone);
  Status cleaned = CleanupSession(dir_, *gone);
  ASSERT_TRUE(cleaned.ok()) << cleaned.error().ToString();
  EXPECT_FALSE(fs::exists(info->cgroup)) << "the orphaned grandchild was killed with it";
  EXPECT_FALSE(fs::exists(MetadataPath(dir_, restored.name)));
}

}  // namespace
}  // namespace stasis::session
