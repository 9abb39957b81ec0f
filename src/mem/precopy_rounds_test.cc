// Pre-copy rounds on a real child: round 1 sends its memory, an idle child
// converges (the next round sends nearly nothing), written pages are sent
// again, and at the freeze only pages unchanged since they were sent are
// kept.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include "mem/mem_testing.h"
#include "mem/precopy.h"
#include "sys/features.h"
#include "sys/unique_fd.h"

namespace stasis::mem {
namespace {

using test_support::Cleanup;
using test_support::kPage;
using test_support::MapPages;
constexpr uint64_t kPages = 256;

// Fills kPages pages, reports their address, then obeys one byte at a
// time: 'w' rewrites pages 5-9, 'm' maps 16 new pages and reports where,
// 'u' unmaps pages 200-255, 'f' forks a child that pauses and reports its
// pid.
[[noreturn]] void Child(int to_parent, int from_parent) {
  uint8_t* mem = MapPages(kPages);
  for (uint64_t i = 0; i < kPages * kPage; ++i) mem[i] = static_cast<uint8_t>(i * 7 + 3);
  uint64_t addr = reinterpret_cast<uint64_t>(mem);
  if (write(to_parent, &addr, sizeof addr) != sizeof addr) _exit(2);
  char cmd;
  while (read(from_parent, &cmd, 1) == 1) {
    uint64_t reply = 0;
    if (cmd == 'w') {
      for (int p = 5; p < 10; ++p) memset(mem + p * kPage, 0xa5, kPage);
    } else if (cmd == 'm') {
      uint8_t* more = MapPages(16);
      memset(more, 0x3c, 16 * kPage);
      reply = reinterpret_cast<uint64_t>(more);
    } else if (cmd == 'u') {
      munmap(mem + 200 * kPage, 56 * kPage);
    } else if (cmd == 'f') {
      pid_t kid = fork();
      if (kid == 0) {
        for (;;) pause();
      }
      reply = static_cast<uint64_t>(kid);
    }
    if (write(to_parent, &reply, sizeof reply) != sizeof reply) _exit(2);
  }
  _exit(0);
}

// What the destination would hold: the first byte of every page sent.
struct Received {
  std::map<uint64_t, uint8_t> first_byte;
  uint32_t pid = 0;
  std::map<uint32_t, uint64_t> pages_of;
  SendRun Sender() {
    return [this](uint32_t p, uint64_t addr, uint64_t npages, const uint8_t* data) {
      pid = p;
      pages_of[p] += npages;
      for (uint64_t i = 0; i < npages; ++i) first_byte[addr + i * kPage] = data[i * kPage];
      return Ok();
    };
  }
};

class PrecopyRounds : public testing::Test {
 protected:
  void SetUp() override {
    if (!sys::KernelFeatures::Probe().Has("uffd WP_ASYNC")) GTEST_SKIP() << "no uffd WP_ASYNC";
    int up[2], down[2];
    ASSERT_EQ(pipe2(up, O_CLOEXEC), 0);
    ASSERT_EQ(pipe2(down, O_CLOEXEC), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) Child(up[1], down[0]);
    close(up[1]);
    close(down[0]);
    child_.pid = pid;
    child_.fds = {up[0], down[1]};
    ASSERT_EQ(read(up[0], &addr_, sizeof addr_), static_cast<ssize_t>(sizeof addr_));
  }
  uint64_t Command(char c) {
    uint64_t reply = 0;
    EXPECT_EQ(write(child_.fds[1], &c, 1), 1);
    EXPECT_EQ(read(child_.fds[0], &reply, sizeof reply), static_cast<ssize_t>(sizeof reply));
    return reply;
  }
  void Stop() {
    ASSERT_EQ(kill(child_.pid, SIGSTOP), 0);
    int status = 0;
    ASSERT_EQ(waitpid(child_.pid, &status, WUNTRACED), child_.pid);
  }
  PagePlan Plan(uint64_t npages) const {
    PagePlan plan;
    plan.runs.push_back({addr_, npages, true, true});
    return plan;
  }

  Cleanup child_;
  uint64_t addr_ = 0;
};

uint64_t Pages(const std::vector<Range>& ranges) {
  uint64_t n = 0;
  for (const Range& r : ranges) n += (r.end - r.start) / kPage;
  return n;
}

TEST_F(PrecopyRounds, SendsAllThenOnlyWhatIsWritten) {
  Precopy pc = Precopy::StartTracking(child_.pid);
  ASSERT_TRUE(pc.tracking());
  Received got;
  Result<RoundStats> r1 = pc.SendRound(got.Sender());
  ASSERT_TRUE(r1.ok()) << r1.error().ToString();
  EXPECT_GE(r1->pages_sent, kPages);
  EXPECT_EQ(r1->bytes, r1->pages_sent * kPage);
  EXPECT_EQ(got.pid, static_cast<uint32_t>(child_.pid));
  for (uint64_t p = 0; p < kPages; ++p) {
    ASSERT_EQ(got.first_byte.count(addr_ + p * kPage), 1u) << "page " << p;
    EXPECT_EQ(got.first_byte[addr_ + p * kPage], static_cast<uint8_t>(p * kPage * 7 + 3));
  }
  // Idle (blocked in read): the next round converges to nearly nothing.
  Result<RoundStats> r2 = pc.SendRound(got.Sender());
  ASSERT_TRUE(r2.ok()) << r2.error().ToString();
  EXPECT_LT(r2->pages_sent, 8u);

  Command('w');
  Result<uint64_t> dirty = pc.DirtyPages();
  ASSERT_TRUE(dirty.ok());
  EXPECT_GE(dirty.value(), 5u);
  uint64_t more = Command('m');
  Result<RoundStats> r3 = pc.SendRound(got.Sender());
  ASSERT_TRUE(r3.ok()) << r3.error().ToString();
  EXPECT_GE(r3->dirty_pages, 5u);
  EXPECT_GE(r3->pages_sent, 5u + 16u);  // the written pages and the new VMA
  EXPECT_LT(r3->pages_sent, 5u + 16u + 16u);
  EXPECT_EQ(got.first_byte[addr_ + 5 * kPage], 0xa5);
  EXPECT_EQ(got.first_byte[more + 15 * kPage], 0x3c);

  Stop();
  pc.Settle();
  PlanSplit split = pc.Split(child_.pid, Plan(kPages));
  EXPECT_EQ(Pages(split.kept), kPages);
  EXPECT_TRUE(split.rest.runs.empty());
}

TEST_F(PrecopyRounds, KeepsOnlyPagesUnchangedSinceSent) {
  Precopy pc = Precopy::StartTracking(child_.pid);
  Received got;
  ASSERT_TRUE(pc.SendRound(got.Sender()).ok());
  Command('w');  // after the last round: pages 5-9 are not kept
  Command('u');  // pages 200-255 gone: never kept, whatever was sent
  Stop();
  pc.Settle();
  PlanSplit split = pc.Split(child_.pid, Plan(kPages));
  ASSERT_EQ(split.kept.size(), 2u);
  EXPECT_EQ(split.kept[0], (Range{addr_, addr_ + 5 * kPage}));
  EXPECT_EQ(split.kept[1], (Range{addr_ + 10 * kPage, addr_ + 200 * kPage}));
  ASSERT_EQ(split.rest.runs.size(), 2u);
  EXPECT_EQ(split.rest.runs[0].addr, addr_ + 5 * kPage);
  EXPECT_EQ(split.rest.runs[0].npages, 5u);
  EXPECT_EQ(split.rest.runs[1].addr, addr_ + 200 * kPage);
  // A plan that leaves pages out (freed, zero) keeps none of them.
  PagePlan partial;
  partial.runs.push_back({addr_ + 50 * kPage, 2, true, true});
  EXPECT_EQ(Pages(pc.Split(child_.pid, partial).kept), 2u);
  // An untracked process keeps nothing.
  EXPECT_TRUE(pc.Split(child_.pid + 1000000, Plan(10)).kept.empty());
}

TEST_F(PrecopyRounds, AProcessBornDuringTheRoundsIsTrackedFromTheNext) {
  Precopy pc = Precopy::StartTracking(child_.pid);
  Received got;
  ASSERT_TRUE(pc.SendRound(got.Sender()).ok());
  pid_t kid = static_cast<pid_t>(Command('f'));
  ASSERT_GT(kid, 0);
  struct KillKid {
    pid_t pid;
    ~KillKid() { kill(pid, SIGKILL); }  // reaped by the child, or init once it is gone
  } kill_kid{kid};
  Result<RoundStats> r2 = pc.SendRound(got.Sender());
  ASSERT_TRUE(r2.ok()) << r2.error().ToString();
  EXPECT_GE(got.pages_of[static_cast<uint32_t>(kid)], kPages);  // sent whole
  ASSERT_EQ(kill(kid, SIGSTOP), 0);
  Stop();
  pc.Settle();
  EXPECT_EQ(Pages(pc.Split(kid, Plan(kPages)).kept), kPages);
}

TEST_F(PrecopyRounds, AFailingSendFailsTheRound) {
  Precopy pc = Precopy::StartTracking(child_.pid);
  Result<RoundStats> r = pc.SendRound([](uint32_t, uint64_t, uint64_t, const uint8_t*) -> Status {
    return Error::FromErrno("link down", EPIPE);
  });
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("link down"), std::string::npos);
}

}  // namespace
}  // namespace stasis::mem
