#include "sys/cgroup.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <new>
#include <optional>
#include <thread>

#include "sys/proc.h"

namespace stasis::sys {
namespace {

using std::chrono::milliseconds;

TEST(CgroupMountTest, PrefersUnifiedOnHybridHosts) {
  const char* text =
      "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
      "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
      "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
  auto mount = ParseCgroup2Mount(text);
  ASSERT_TRUE(mount.ok()) << mount.error().ToString();
  EXPECT_EQ(*mount, "/sys/fs/cgroup/unified");
}

TEST(CgroupMountTest, PureV2AndOptionalFields) {
  const char* text =
      "24 29 0:22 / /proc rw,nosuid - proc proc rw\n"
      "29 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
      "26 23 0:24 / /sys/fs/cgroup rw,nosuid shared:4 master:2 - cgroup2 cgroup2 rw,nsdelegate\n";
  auto mount = ParseCgroup2Mount(text);
  ASSERT_TRUE(mount.ok()) << mount.error().ToString();
  EXPECT_EQ(*mount, "/sys/fs/cgroup");
}

TEST(CgroupMountTest, UnusualPlaceIsUnescaped) {
  auto mount = ParseCgroup2Mount("50 1 0:40 / /mnt/my\\040cg rw - cgroup2 none rw\n");
  ASSERT_TRUE(mount.ok()) << mount.error().ToString();
  EXPECT_EQ(*mount, "/mnt/my cg");
}

TEST(CgroupMountTest, NoneMounted) {
  auto mount = ParseCgroup2Mount("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw\n");
  ASSERT_FALSE(mount.ok());
  EXPECT_EQ(mount.error().code(), ErrorCode::kNotFound);
}

TEST(CgroupNameTest, RejectsEscapes) {
  for (const char* bad : {"", "/abs", "a/../b", "a//b", "trailing/", ".."}) {
    auto cg = Cgroup::Create(bad);
    ASSERT_FALSE(cg.ok()) << bad;
    EXPECT_EQ(cg.error().code(), ErrorCode::kInvalid) << bad;
  }
}

// A child that counts as fast as it can into shared memory.
struct Counter {
  pid_t pid = 0;
  std::atomic<uint64_t>* value = nullptr;
};

Counter StartCounter() {
  void* mem = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return {};
  Counter c;
  c.value = new (mem) std::atomic<uint64_t>(0);
  c.pid = fork();
  if (c.pid == 0) {
    for (;;) c.value->fetch_add(1, std::memory_order_relaxed);
  }
  return c;
}

uint64_t AdvanceOver(const Counter& c, milliseconds wait) {
  uint64_t before = c.value->load();
  std::this_thread::sleep_for(wait);
  return c.value->load() - before;
}

class CgroupLiveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root";
    if (!FindCgroup2Mount().ok()) GTEST_SKIP() << "no cgroup2 mounted";
    auto cg = Cgroup::Create("stasis/unit-" + std::to_string(getpid()));
    ASSERT_TRUE(cg.ok()) << cg.error().ToString();
    cgroup_ = std::move(cg).value();
  }
  void TearDown() override {
    if (counter_.pid > 0) {
      kill(counter_.pid, SIGKILL);
      waitpid(counter_.pid, nullptr, 0);
    }
    if (counter_.value != nullptr) munmap(counter_.value, 4096);
    if (cgroup_) {
      EXPECT_TRUE(cgroup_->Remove().ok());
    }
  }
  void StartAndMoveCounter() {
    counter_ = StartCounter();
    ASSERT_GT(counter_.pid, 0);
    Status moved = cgroup_->AddProcess(counter_.pid);
    ASSERT_TRUE(moved.ok()) << moved.error().ToString();
  }

  std::optional<Cgroup> cgroup_;
  Counter counter_;
};

TEST_F(CgroupLiveTest, MovesAForkedChildAndListsIt) {
  StartAndMoveCounter();
  auto pids = cgroup_->Processes();
  ASSERT_TRUE(pids.ok()) << pids.error().ToString();
  EXPECT_EQ(*pids, std::vector<pid_t>{counter_.pid});
  auto populated = cgroup_->Populated();
  ASSERT_TRUE(populated.ok());
  EXPECT_TRUE(*populated);
  auto own = proc::ReadFile(proc::ProcPath(counter_.pid, "cgroup"));
  ASSERT_TRUE(own.ok());
  EXPECT_NE(own->find("0::/stasis/unit-"), std::string::npos) << *own;
  auto memory = cgroup_->MemoryCurrent();
  ASSERT_TRUE(memory.ok()) << memory.error().ToString();
  if (memory->has_value()) {
    EXPECT_GT(**memory, 0u);
  }
}

TEST_F(CgroupLiveTest, RemoveRefusesWhilePopulatedThenKillAllEmptiesIt) {
  StartAndMoveCounter();
  Status removed = cgroup_->Remove(milliseconds(0));
  ASSERT_FALSE(removed.ok());
  EXPECT_EQ(removed.error().errnum(), EBUSY);
  Status killed = cgroup_->KillAll();
  ASSERT_TRUE(killed.ok()) << killed.error().ToString();
  EXPECT_FALSE(cgroup_->Populated().value());
  EXPECT_TRUE(cgroup_->Remove().ok());
  EXPECT_FALSE(std::filesystem::exists(cgroup_->path()));
  EXPECT_TRUE(cgroup_->Remove().ok()) << "removing twice is fine";
  EXPECT_FALSE(Cgroup::Open(cgroup_->path()).ok());
}

TEST_F(CgroupLiveTest, FreezeStopsTheCounterAndTheDestructorThaws) {
  StartAndMoveCounter();
  ASSERT_GT(AdvanceOver(counter_, milliseconds(20)), 0u);
  {
    auto frozen = FrozenCgroup::Freeze(*cgroup_);
    ASSERT_TRUE(frozen.ok()) << frozen.error().ToString();
    auto events = proc::ReadFile(cgroup_->path() + "/cgroup.events");
    ASSERT_TRUE(events.ok());
    EXPECT_NE(events->find("frozen 1"), std::string::npos) << *events;
    // The v2 freezer parks tasks in S (interruptible), unlike v1's D.
    auto status = proc::ParseStatus(proc::ReadFile(proc::ProcPath(counter_.pid, "status")).value());
    ASSERT_TRUE(status.ok());
    EXPECT_EQ(status->state, 'S');
    EXPECT_EQ(AdvanceOver(counter_, milliseconds(100)), 0u);
  }
  EXPECT_GT(AdvanceOver(counter_, milliseconds(100)), 0u);
  auto events = proc::ReadFile(cgroup_->path() + "/cgroup.events");
  EXPECT_NE(events->find("frozen 0"), std::string::npos) << *events;
}

TEST_F(CgroupLiveTest, ThawReportsAndLeavesAPreviousFreezeInPlace) {
  StartAndMoveCounter();
  auto outer = FrozenCgroup::Freeze(*cgroup_);
  ASSERT_TRUE(outer.ok()) << outer.error().ToString();
  {
    auto inner = FrozenCgroup::Freeze(*cgroup_);
    ASSERT_TRUE(inner.ok()) << inner.error().ToString();
  }
  EXPECT_EQ(AdvanceOver(counter_, milliseconds(50)), 0u) << "inner must not thaw the outer";
  EXPECT_TRUE(outer->Thaw().ok());
  EXPECT_TRUE(outer->Thaw().ok()) << "a second thaw is a no-op";
  EXPECT_GT(AdvanceOver(counter_, milliseconds(100)), 0u);
}

TEST_F(CgroupLiveTest, FreezingAnEmptyCgroupIsImmediate) {
  auto frozen = FrozenCgroup::Freeze(*cgroup_, milliseconds(1000));
  ASSERT_TRUE(frozen.ok()) << frozen.error().ToString();
}

}  // namespace
}  // namespace stasis::sys
