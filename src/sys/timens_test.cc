#include "sys/timens.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <string>

namespace stasis::sys {
namespace {

constexpr int64_t kSec = kNsPerSec;

TEST(TimeOffsetsTest, ParsesTheKernelsFormat) {
  auto offsets = ParseTimeOffsets("monotonic      -10000 250000000\nboottime 5000 0\n");
  ASSERT_TRUE(offsets.ok()) << offsets.error().ToString();
  EXPECT_EQ(offsets->monotonic_ns, -10000 * kSec + 250000000);
  EXPECT_EQ(offsets->boottime_ns, 5000 * kSec);
  auto by_id = ParseTimeOffsets("1 3 0\n7 -1 5\n");
  ASSERT_TRUE(by_id.ok()) << by_id.error().ToString();
  EXPECT_EQ(by_id->monotonic_ns, 3 * kSec);
  EXPECT_EQ(by_id->boottime_ns, -kSec + 5);
}

TEST(TimeOffsetsTest, RefusesWhatIsNotOffsets) {
  for (const char* bad :
       {"monotonic 1\n", "realtime 1 0\n", "monotonic 1 1000000000\n", "monotonic 1 -1\n",
        "boottime x 0\n", "monotonic 99999999999999 0\n", "monotonic 1 0 0\n"}) {
    auto r = ParseTimeOffsets(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.error().code(), ErrorCode::kInvalid) << bad;
    }
  }
}

TEST(TimeOffsetsTest, FormatsNegativeOffsetsWithPositiveNanoseconds) {
  std::string text = FormatTimeOffsets({-1500000000, 2 * kSec + 7});
  EXPECT_EQ(text, "monotonic -2 500000000\nboottime 2 7\n");
  auto back = ParseTimeOffsets(text);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, (TimeOffsets{-1500000000, 2 * kSec + 7}));
}

// The arithmetic alone: a tree recorded on a host booted long ago, restored
// on one booted a minute ago, 30 s (of wall clock) later.
TEST(ContinuationOffsetsTest, ClocksGoOnByTheWallTimeElapsed) {
  ClockReading recorded{1000000 * kSec, 1200000 * kSec, 1700000000 * kSec};
  ClockReading host{60 * kSec, 65 * kSec, 1700000030 * kSec};
  auto offsets = ContinuationOffsets(recorded, host);
  ASSERT_TRUE(offsets.ok()) << offsets.error().ToString();
  ClockReading seen = Shifted(host, *offsets);
  EXPECT_EQ(seen.monotonic_ns, 1000030 * kSec);
  EXPECT_EQ(seen.boottime_ns, 1200030 * kSec);
  EXPECT_EQ(offsets->monotonic_ns, (1000030 - 60) * kSec);
}

TEST(ContinuationOffsetsTest, NegativeOffsetsForAYoungerTree) {
  ClockReading recorded{5 * kSec, 6 * kSec, 100 * kSec};
  ClockReading host{10000 * kSec, 20000 * kSec, 101 * kSec};
  auto offsets = ContinuationOffsets(recorded, host);
  ASSERT_TRUE(offsets.ok()) << offsets.error().ToString();
  EXPECT_EQ(offsets->monotonic_ns, (6 - 10000) * kSec);
  EXPECT_EQ(offsets->boottime_ns, (7 - 20000) * kSec);
}

// A destination whose wall clock is behind the source's must not send the
// tree's clocks back: they go on from where they were.
TEST(ContinuationOffsetsTest, WallClockBehindNeverGoesBack) {
  ClockReading recorded{500 * kSec, 500 * kSec, 2000 * kSec};
  ClockReading host{100 * kSec, 100 * kSec, 1990 * kSec};
  auto offsets = ContinuationOffsets(recorded, host);
  ASSERT_TRUE(offsets.ok()) << offsets.error().ToString();
  EXPECT_EQ(Shifted(host, *offsets).monotonic_ns, 500 * kSec);
}

TEST(ContinuationOffsetsTest, SameHostRestoreKeepsTheOffsets) {
  // Recorded with offsets 0; restored 3 s later on the same host.
  ClockReading recorded{700 * kSec, 800 * kSec, 5000 * kSec};
  ClockReading host{703 * kSec, 803 * kSec, 5003 * kSec};
  auto offsets = ContinuationOffsets(recorded, host);
  ASSERT_TRUE(offsets.ok());
  EXPECT_EQ(*offsets, TimeOffsets{});
}

TEST(ContinuationOffsetsTest, RefusesWhatTheKernelCannotShow) {
  ClockReading host{100 * kSec, 100 * kSec, 1000 * kSec};
  ClockReading negative{-1, 5 * kSec, 1000 * kSec};
  auto r = ContinuationOffsets(negative, host);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(r.error().message().find("CLOCK_MONOTONIC"), std::string::npos);

  ClockReading huge{5 * kSec, kMaxNamespaceClockSec * kSec, 1000 * kSec};
  r = ContinuationOffsets(huge, host);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(r.error().message().find("CLOCK_BOOTTIME"), std::string::npos) << r.error().message();

  // Near the limit, then a long wall-clock gap pushes past it.
  ClockReading near{(kMaxNamespaceClockSec - 3600) * kSec, 5 * kSec, INT64_MIN};
  r = ContinuationOffsets(near, {100 * kSec, 100 * kSec, INT64_MAX});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kUnsupported);
}

// A child of this process, entered into the namespace, reads its clocks and
// writes them to a pipe.
ClockReading ReadInside(int ns_fd) {
  int p[2];
  EXPECT_EQ(pipe(p), 0);
  pid_t child = fork();
  if (child == 0) {
    ClockReading r{-1, -1, -1};
    if (EnterTimeNamespace(ns_fd) == 0) r = ReadClocks();
    (void)!write(p[1], &r, sizeof(r));
    _exit(0);
  }
  close(p[1]);
  ClockReading r{-2, -2, -2};
  EXPECT_EQ(read(p[0], &r, sizeof(r)), static_cast<ssize_t>(sizeof(r)));
  close(p[0]);
  int status = 0;
  waitpid(child, &status, 0);
  return r;
}

TEST(TimeNamespaceTest, ChildSeesTheOffsetsAndTheHostDoesNot) {
  auto id = TimeNamespaceId(0);
  ASSERT_TRUE(id.ok()) << id.error().ToString();
  if (*id == 0) GTEST_SKIP() << "no time namespaces (CONFIG_TIME_NS)";
  auto host = ReadHostClocks();
  ASSERT_TRUE(host.ok()) << host.error().ToString();
  // Ahead by a day for one clock, back to ~1 s after boot for the other.
  TimeOffsets offsets{86400 * kSec, -(host->boottime_ns - kSec)};
  auto ns = CreateTimeNamespace(offsets);
  ASSERT_TRUE(ns.ok()) << ns.error().ToString();
  ClockReading before = ReadClocks();
  ClockReading inside = ReadInside(ns->get());
  ClockReading after = ReadClocks();
  ASSERT_GE(inside.monotonic_ns, 0) << "the child could not enter the namespace";
  EXPECT_GE(inside.monotonic_ns, before.monotonic_ns + offsets.monotonic_ns);
  EXPECT_LE(inside.monotonic_ns, after.monotonic_ns + offsets.monotonic_ns);
  EXPECT_GE(inside.boottime_ns, before.boottime_ns + offsets.boottime_ns);
  EXPECT_LE(inside.boottime_ns, after.boottime_ns + offsets.boottime_ns);
  EXPECT_LT(inside.boottime_ns, 60 * kSec);
  EXPECT_GE(inside.realtime_ns, before.realtime_ns) << "CLOCK_REALTIME is never shifted";
  EXPECT_LE(inside.realtime_ns, after.realtime_ns);
  // This process is still in its own namespace.
  EXPECT_EQ(TimeNamespaceId(0).value(), *id);
}

TEST(TimeNamespaceTest, OffsetsAreReadBackFromAProcessInside) {
  auto id = TimeNamespaceId(0);
  ASSERT_TRUE(id.ok());
  if (*id == 0) GTEST_SKIP() << "no time namespaces (CONFIG_TIME_NS)";
  TimeOffsets offsets{-3 * kSec + 5, 7 * kSec};
  auto ns = CreateTimeNamespace(offsets);
  ASSERT_TRUE(ns.ok()) << ns.error().ToString();
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  pid_t child = fork();
  if (child == 0) {
    close(go[1]);
    if (EnterTimeNamespace(ns->get()) != 0) _exit(1);
    char c;
    (void)!read(go[0], &c, 1);
    _exit(0);
  }
  close(go[0]);
  // The child may not have entered yet: wait until it has.
  Result<uint64_t> child_ns = TimeNamespaceId(child);
  for (int i = 0; i < 2000 && child_ns.ok() && *child_ns == *id; ++i) {
    usleep(1000);
    child_ns = TimeNamespaceId(child);
  }
  auto read_back = ReadTimeOffsets(child);
  close(go[1]);
  waitpid(child, nullptr, 0);
  ASSERT_TRUE(child_ns.ok()) << child_ns.error().ToString();
  EXPECT_NE(*child_ns, *id);
  ASSERT_TRUE(read_back.ok()) << read_back.error().ToString();
  EXPECT_EQ(*read_back, offsets);
}

TEST(TimeNamespaceTest, KernelRefusalIsNamed) {
  auto id = TimeNamespaceId(0);
  ASSERT_TRUE(id.ok());
  if (*id == 0) GTEST_SKIP() << "no time namespaces (CONFIG_TIME_NS)";
  // A monotonic clock before boot: the kernel says ERANGE.
  auto ns = CreateTimeNamespace({-(kMaxNamespaceClockSec * kSec), 0});
  ASSERT_FALSE(ns.ok());
  EXPECT_EQ(ns.error().errnum(), ERANGE);
  EXPECT_NE(ns.error().message().find("timens_offsets"), std::string::npos) << ns.error().message();
}

}  // namespace
}  // namespace stasis::sys
