// The Spawner with a tree's time namespace, from fabricated manifest clocks
// (as a dump on a host booted at another time would record them): its
// puppets are born in a namespace whose clocks go on from those.
#include "restore/spawn.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "sys/proc.h"
#include "sys/timens.h"

namespace stasis::restore {
namespace {

constexpr int64_t kSec = sys::kNsPerSec;
constexpr int kSlot = 50;

bool HaveTimeNamespaces() {
  Result<uint64_t> id = sys::TimeNamespaceId(0);
  return id.ok() && *id != 0;
}

// Clocks as a tree dumped `ago_sec` seconds ago (by the wall clock) saw them.
image::Clocks Recorded(int64_t monotonic_sec, int64_t boottime_sec, int64_t ago_sec) {
  image::Clocks c;
  c.set_own_time_ns(true);
  c.set_monotonic_ns(monotonic_sec * kSec);
  c.set_boottime_ns(boottime_sec * kSec);
  c.set_realtime_ns(sys::ReadClocks().realtime_ns - ago_sec * kSec);
  return c;
}

// What a process entering the time namespace of `pid` reads, through a
// child of ours that enters it.
sys::ClockReading ClocksSeenBy(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/ns/time";
  sys::UniqueFd ns(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  EXPECT_TRUE(ns.valid()) << path;
  int p[2];
  EXPECT_EQ(pipe(p), 0);
  pid_t child = fork();
  if (child == 0) {
    sys::ClockReading r{-1, -1, -1};
    if (sys::EnterTimeNamespace(ns.get()) == 0) r = sys::ReadClocks();
    (void)!write(p[1], &r, sizeof(r));
    _exit(0);
  }
  close(p[1]);
  sys::ClockReading r{-2, -2, -2};
  EXPECT_EQ(read(p[0], &r, sizeof(r)), static_cast<ssize_t>(sizeof(r)));
  close(p[0]);
  waitpid(child, nullptr, 0);
  return r;
}

// The recorded clocks plus the wall time since, within `slack`.
void ExpectGoesOn(const sys::ClockReading& seen, const image::Clocks& recorded) {
  int64_t wall = seen.realtime_ns - recorded.realtime_ns();
  EXPECT_GE(seen.monotonic_ns, recorded.monotonic_ns() + wall - kSec / 2);
  EXPECT_LE(seen.monotonic_ns, recorded.monotonic_ns() + wall + kSec);
  EXPECT_GE(seen.boottime_ns, recorded.boottime_ns() + wall - kSec / 2);
  EXPECT_LE(seen.boottime_ns, recorded.boottime_ns() + wall + kSec);
}

TEST(TreeTimeNamespaceTest, NoneForATreeThatHadTheHostsClocks) {
  sys::KernelFeatures features = sys::KernelFeatures::Probe();
  NullLogger log;
  image::Clocks clocks = Recorded(5, 5, 0);
  clocks.set_own_time_ns(false);
  auto ns = TimeNamespaceFor(features, clocks, log);
  ASSERT_TRUE(ns.ok()) << ns.error().ToString();
  EXPECT_FALSE(ns->valid());
}

TEST(TreeTimeNamespaceTest, RefusesWithoutTimeNamespacesOrBeyondTheKernelsLimit) {
  std::vector<sys::Feature> all = sys::KernelFeatures::Probe().all();
  for (sys::Feature& f : all) {
    if (f.name == "time namespaces") f.present = false;
  }
  sys::KernelFeatures without = sys::KernelFeatures::With(std::move(all));
  NullLogger log;
  auto ns = TimeNamespaceFor(without, Recorded(5, 5, 0), log);
  ASSERT_FALSE(ns.ok());
  EXPECT_EQ(ns.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(ns.error().message().find("time namespaces"), std::string::npos);

  ns = TimeNamespaceFor(sys::KernelFeatures::Probe(),
                        Recorded(sys::kMaxNamespaceClockSec - 30, 5, 0), log);
  ASSERT_FALSE(ns.ok());
  EXPECT_EQ(ns.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(ns.error().message().find("CLOCK_MONOTONIC"), std::string::npos)
      << ns.error().message();
}

// A tree recorded 20 s ago (wall clock) with a monotonic clock of 5 s (its
// host had just booted) and a boottime of 30 days.
TEST(SpawnerTimeNamespaceTest, PuppetsInANewPidNamespaceSeeTheTreesClocks) {
  if (!HaveTimeNamespaces()) GTEST_SKIP() << "no time namespaces (CONFIG_TIME_NS)";
  NullLogger log;
  image::Clocks recorded = Recorded(5, 30 * 86400, 20);
  auto ns = TimeNamespaceFor(sys::KernelFeatures::Probe(), recorded, log);
  ASSERT_TRUE(ns.ok()) << ns.error().ToString();
  ASSERT_TRUE(ns->valid());
  auto spawner = Spawner::Start(/*new_pid_ns=*/true, std::move(*ns));
  ASSERT_TRUE(spawner.ok()) << spawner.error().ToString();
  auto puppet = spawner->CreatePuppet(100, kSlot);
  ASSERT_TRUE(puppet.ok()) << puppet.error().ToString();
  uint64_t own = sys::TimeNamespaceId(0).value();
  uint64_t init_ns = sys::TimeNamespaceId(spawner->init_host_pid()).value();
  EXPECT_NE(init_ns, own);
  EXPECT_EQ(sys::TimeNamespaceId(puppet->host_pid).value(), init_ns);
  ExpectGoesOn(ClocksSeenBy(puppet->host_pid), recorded);
  // The Spawner, uncommitted, kills its init and with it the namespace.
}

TEST(SpawnerTimeNamespaceTest, PuppetsInTheHostsPidNamespaceEnterItThemselves) {
  if (!HaveTimeNamespaces()) GTEST_SKIP() << "no time namespaces (CONFIG_TIME_NS)";
  // A free PID near the top of this namespace's range.
  auto max_text = sys::proc::ReadFile("/proc/sys/kernel/pid_max");
  ASSERT_TRUE(max_text.ok());
  pid_t pid = std::stoi(*max_text) - 1 - getpid() % 1000;
  while (access(("/proc/" + std::to_string(pid)).c_str(), F_OK) == 0) --pid;
  NullLogger log;
  image::Clocks recorded = Recorded(1000000, 2000000, 3);
  auto ns = TimeNamespaceFor(sys::KernelFeatures::Probe(), recorded, log);
  ASSERT_TRUE(ns.ok()) << ns.error().ToString();
  auto spawner = Spawner::Start(/*new_pid_ns=*/false, std::move(*ns));
  ASSERT_TRUE(spawner.ok()) << spawner.error().ToString();
  auto puppet = spawner->CreatePuppet(pid, kSlot);
  ASSERT_TRUE(puppet.ok()) << puppet.error().ToString();
  EXPECT_EQ(puppet->host_pid, pid);
  EXPECT_NE(sys::TimeNamespaceId(pid).value(), sys::TimeNamespaceId(0).value());
  ExpectGoesOn(ClocksSeenBy(pid), recorded);
  // Our child: killed and reaped here.
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

}  // namespace
}  // namespace stasis::restore
