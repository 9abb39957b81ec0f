// The page store: rounds, overlaps, declared ranges, and pages written into
// a real child process (its address space attached after the first round).
#include "mem/page_store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "mem/mem_testing.h"

namespace stasis::mem {
namespace {

using test_support::Cleanup;
using test_support::kPage;
using test_support::MapPages;

image::Process ProcessWithVmas(int pid, uint64_t start, uint64_t end) {
  image::Process p;
  p.set_pid(pid);
  image::Vma* a = p.add_vmas();
  a->set_start(start);
  a->set_end(end);
  a->set_has_pages(true);
  image::Vma* b = p.add_vmas();
  b->set_start(end + 0x10000);
  b->set_end(end + 0x20000);
  b->set_has_pages(false);
  return p;
}

std::vector<uint8_t> Pages(uint32_t n, uint8_t fill) {
  return std::vector<uint8_t>(n * kPage, fill);
}

// Records what is written, page by page.
class RecordingSink : public PageSink {
 public:
  explicit RecordingSink(std::map<uint64_t, uint8_t>* pages) : pages_(pages) {}
  Status Write(uint64_t addr, const uint8_t* data, uint64_t len) override {
    for (uint64_t off = 0; off < len; off += kPage) (*pages_)[addr + off] = data[off];
    return Ok();
  }

 private:
  std::map<uint64_t, uint8_t>* pages_;
};

TEST(RangeSet, MergesSplitsAndFindsGaps) {
  RangeSet s;
  s.Add(0x1000, 0x3000);
  s.Add(0x3000, 0x4000);  // adjacent: merged
  s.Add(0x6000, 0x8000);
  EXPECT_EQ(s.All(), (std::vector<Range>{{0x1000, 0x4000}, {0x6000, 0x8000}}));
  s.Add(0x2000, 0x7000);  // overlaps both
  EXPECT_EQ(s.All(), (std::vector<Range>{{0x1000, 0x8000}}));
  s.Remove(0x2000, 0x3000);
  EXPECT_EQ(s.All(), (std::vector<Range>{{0x1000, 0x2000}, {0x3000, 0x8000}}));
  EXPECT_TRUE(s.Covers(0x3000, 0x8000));
  EXPECT_FALSE(s.Covers(0x1000, 0x3000));
  EXPECT_EQ(s.Gaps(0, 0x9000),
            (std::vector<Range>{{0, 0x1000}, {0x2000, 0x3000}, {0x8000, 0x9000}}));
  EXPECT_EQ(s.bytes(), 0x6000u);
}

TEST(PageStore, RunOutsideCarryingVmaIsCorrupt) {
  PageStore store;
  store.Expect(ProcessWithVmas(7, 0x10000, 0x20000));
  std::vector<uint8_t> page = Pages(2, 0);
  for (auto [addr, n] : {std::pair<uint64_t, uint32_t>{0x8000, 1},  // below every VMA
                         {0x1f000, 2},                              // runs past the end
                         {0x30000, 1},                              // VMA without pages
                         {0x50000, 1}}) {                           // above every VMA
    Status s = store.Add({7, addr, n, page.data()});
    ASSERT_FALSE(s.ok()) << std::hex << addr;
    EXPECT_EQ(s.error().code(), ErrorCode::kCorrupt);
  }
  EXPECT_EQ(store.Add({8, 0x10000, 1, page.data()}).error().code(), ErrorCode::kCorrupt);
}

// Rounds before the address space exists, overlapping each other: the
// latest page wins, whatever the overlap; after attach, runs go straight on.
TEST(PageStore, LaterRoundsReplaceEarlierPagesHeldOrWritten) {
  PageStore store;
  store.Expect(ProcessWithVmas(7, 0x10000, 0x30000));
  std::vector<uint8_t> a = Pages(8, 'a'), b = Pages(3, 'b'), c = Pages(4, 'c'), d = Pages(1, 'd');
  ASSERT_TRUE(store.Add({7, 0x10000, 8, a.data()}).ok());  // pages 0-7
  ASSERT_TRUE(store.Add({7, 0x12000, 3, b.data()}).ok());  // inside: 2-4
  ASSERT_TRUE(store.Add({7, 0x16000, 4, c.data()}).ok());  // over the end: 6-9
  ASSERT_TRUE(store.Add({7, 0x1a000, 1, d.data()}).ok());  // adjacent: 10
  std::map<uint64_t, uint8_t> got;
  ASSERT_TRUE(store.Attach(7, std::make_unique<RecordingSink>(&got)).ok());
  std::string want = "aabbbaccccd";
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[0x10000 + i * kPage], want[i]) << i;
  EXPECT_FALSE(store.NextHeld(7).has_value());
  std::vector<uint8_t> e = Pages(2, 'e');
  ASSERT_TRUE(store.Add({7, 0x11000, 2, e.data()}).ok());
  EXPECT_EQ(got[0x11000], 'e');
  EXPECT_EQ(got[0x12000], 'e');
  EXPECT_EQ(store.pages_received(), 18u);
}

TEST(PageStore, MissingIsWhatWasDeclaredAndNotReceived) {
  PageStore store;
  store.Expect(ProcessWithVmas(7, 0x10000, 0x30000));
  EXPECT_TRUE(store.Missing(7).empty());  // nothing declared: an image read whole
  ASSERT_TRUE(store.Declare(7, 0x10000, 0x18000).ok());
  ASSERT_TRUE(store.Declare(7, 0x20000, 0x22000).ok());
  EXPECT_EQ(store.Declare(7, 0x2f000, 0x31000).error().code(), ErrorCode::kCorrupt);
  std::vector<uint8_t> a = Pages(3, 'a');
  ASSERT_TRUE(store.Add({7, 0x12000, 3, a.data()}).ok());
  ASSERT_TRUE(store.Add({7, 0x21000, 1, a.data()}).ok());
  EXPECT_EQ(store.Missing(7),
            (std::vector<Range>{{0x10000, 0x12000}, {0x15000, 0x18000}, {0x20000, 0x21000}}));
  ASSERT_TRUE(store.Add({7, 0x10000, 3, a.data()}).ok());  // overlaps what came
  ASSERT_TRUE(store.Add({7, 0x15000, 3, a.data()}).ok());
  ASSERT_TRUE(store.Add({7, 0x20000, 1, a.data()}).ok());
  EXPECT_TRUE(store.Missing(7).empty());
}

// On-demand delivery: Fill waits for a declared page another thread sends,
// and writes only what it is asked for.
TEST(PageStore, FillWaitsForDeclaredPages) {
  PageStore store;
  store.Expect(ProcessWithVmas(7, 0x10000, 0x30000));
  ASSERT_TRUE(store.Declare(7, 0x10000, 0x14000).ok());
  std::map<uint64_t, uint8_t> got;
  ASSERT_TRUE(store.Attach(7, std::make_unique<RecordingSink>(&got), Delivery::kOnDemand).ok());
  std::vector<uint8_t> a = Pages(4, 'a');
  std::thread sender([&] {
    usleep(20000);
    ASSERT_TRUE(store.Add({7, 0x10000, 4, a.data()}).ok());
  });
  Result<std::vector<Range>> wrote = store.Fill(7, 0x12000, 0x13000, /*wait=*/true);
  sender.join();
  ASSERT_TRUE(wrote.ok()) << wrote.error().ToString();
  EXPECT_EQ(wrote.value(), (std::vector<Range>{{0x12000, 0x13000}}));
  EXPECT_EQ(got.size(), 1u);
  EXPECT_EQ(store.NextHeld(7), (std::optional<Range>{{0x10000, 0x12000}}));
  // A source that ends before sending what it declared fails the wait.
  ASSERT_TRUE(store.Declare(7, 0x20000, 0x21000).ok());
  store.Close(Ok());
  EXPECT_EQ(store.Fill(7, 0x20000, 0x21000, true).error().code(), ErrorCode::kCorrupt);
}

// Records each write whole: what one UFFDIO_COPY would be.
class WriteLog : public PageSink {
 public:
  struct Entry {
    uint64_t addr;
    uint64_t len;
    std::string firsts;  // the first byte of each page
    const uint8_t* data;
  };
  explicit WriteLog(std::vector<Entry>* log) : log_(log) {}
  Status Write(uint64_t addr, const uint8_t* data, uint64_t len) override {
    std::string firsts;
    for (uint64_t off = 0; off < len; off += kPage) firsts += static_cast<char>(data[off]);
    log_->push_back({addr, len, firsts, data});
    return Ok();
  }

 private:
  std::vector<Entry>* log_;
};

// Pages that came in separate runs but touch go out in one write (the lazy
// pager's prefetch: one UFFDIO_COPY per window).
TEST(PageStore, WritesHeldPiecesThatTouchInOneWrite) {
  PageStore store;
  store.Expect(ProcessWithVmas(7, 0x10000, 0x30000));
  std::vector<WriteLog::Entry> log;
  ASSERT_TRUE(store.Attach(7, std::make_unique<WriteLog>(&log), Delivery::kOnDemand).ok());
  std::string letters = "abcdef";
  for (size_t i = 0; i < letters.size(); ++i) {
    std::vector<uint8_t> page = Pages(1, static_cast<uint8_t>(letters[i]));
    ASSERT_TRUE(store.Add({7, 0x10000 + i * kPage, 1, page.data()}).ok());
  }
  std::vector<uint8_t> two = Pages(2, 'x');
  ASSERT_TRUE(store.Add({7, 0x18000, 2, two.data()}).ok());  // after a gap
  Result<std::vector<Range>> wrote = store.Fill(7, 0x11000, 0x30000, /*wait=*/false);
  ASSERT_TRUE(wrote.ok()) << wrote.error().ToString();
  EXPECT_EQ(wrote.value(), (std::vector<Range>{{0x11000, 0x16000}, {0x18000, 0x1a000}}));
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log[0].addr, 0x11000u);
  EXPECT_EQ(log[0].firsts, "bcdef");
  EXPECT_EQ(log[1].firsts, "xx");
  EXPECT_EQ(store.NextHeld(7), (std::optional<Range>{{0x10000, 0x11000}}));
}

// A piece held whole (owned by the caller, as a mapped image's runs) is
// written from where it is, not gathered with a small piece beside it.
TEST(PageStore, NeverGathersPastTwoMiB) {
  PageStore store;
  constexpr uint64_t kBig = 1024;  // pages: 4 MiB
  store.Expect(ProcessWithVmas(7, 0x100000, 0x100000 + (kBig + 1) * kPage));
  std::vector<WriteLog::Entry> log;
  ASSERT_TRUE(store.Attach(7, std::make_unique<WriteLog>(&log), Delivery::kOnDemand).ok());
  std::vector<uint8_t> small = Pages(1, 's');
  auto big = std::make_shared<std::vector<uint8_t>>(Pages(kBig, 'b'));
  ASSERT_TRUE(store.Add({7, 0x100000, 1, small.data()}).ok());
  ASSERT_TRUE(store.Add({7, 0x101000, kBig, big->data()}, big).ok());
  ASSERT_TRUE(store.Fill(7, 0x100000, 0x100000 + (kBig + 1) * kPage, false).ok());
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log[0].len, kPage);
  EXPECT_EQ(log[1].len, kBig * kPage);
  EXPECT_EQ(log[1].data, big->data());
}

// What the lazy pager parks on: Arrived answers without waiting, and
// OnArrival tells of every run and of the close.
TEST(PageStore, ArrivedAnswersWithoutWaitingAndArrivalsAreTold) {
  PageStore store;
  store.Expect(ProcessWithVmas(7, 0x10000, 0x30000));
  ASSERT_TRUE(store.Declare(7, 0x10000, 0x14000).ok());
  int told = 0;
  store.OnArrival([&told] { ++told; });
  EXPECT_FALSE(store.Arrived(7, 0x11000, 0x12000).value());
  EXPECT_TRUE(store.Arrived(7, 0x20000, 0x21000).value());  // never declared
  std::vector<uint8_t> a = Pages(2, 'a');
  ASSERT_TRUE(store.Add({7, 0x10000, 2, a.data()}).ok());
  EXPECT_EQ(told, 1);
  EXPECT_TRUE(store.Arrived(7, 0x11000, 0x12000).value());
  EXPECT_FALSE(store.Arrived(7, 0x11000, 0x13000).value());
  store.Close(Error(ErrorCode::kFailed, "link cut"));
  EXPECT_EQ(told, 2);
  Result<bool> owed = store.Arrived(7, 0x12000, 0x13000);
  ASSERT_FALSE(owed.ok());
  EXPECT_EQ(owed.error().message(), "link cut");
  EXPECT_TRUE(store.Arrived(7, 0x10000, 0x12000).value());
  store.Close(Ok());
  EXPECT_EQ(store.Arrived(7, 0x12000, 0x13000).error().code(), ErrorCode::kCorrupt);
  store.OnArrival(nullptr);
}

// Partial memory across a fork: a child forked while its parent's memory
// is partial gets only what the parent had then; what is written into the
// parent after the fork never reaches it. So the store fills the ranges a
// child inherits before it is forked, as the restore does.
TEST(PageStore, ChildSeesOnlyWhatWasFilledBeforeItsFork) {
  constexpr uint64_t kLen = 4 * kPage;
  uint8_t* region = MapPages(kLen / kPage);
  ASSERT_NE(region, MAP_FAILED);
  uint64_t base = reinterpret_cast<uint64_t>(region);
  int to_child[2], from_child[2];
  ASSERT_EQ(pipe(to_child), 0);
  ASSERT_EQ(pipe(from_child), 0);
  Cleanup cleanup;
  cleanup.fds = {to_child[0], to_child[1], from_child[0], from_child[1]};
  pid_t parent = fork();
  ASSERT_GE(parent, 0);
  if (parent > 0) cleanup.pid = parent;
  if (parent == 0) {
    // The "parent" of the restored pair: forks the child on request.
    cleanup.fds.clear();
    char c;
    if (read(to_child[0], &c, 1) != 1) _exit(1);
    pid_t child = fork();
    if (child == 0) {
      if (read(to_child[0], &c, 1) != 1) _exit(1);
      char seen[4];
      for (int i = 0; i < 4; ++i) seen[i] = static_cast<char>(region[i * kPage]);
      _exit(write(from_child[1], seen, 4) == 4 ? 0 : 1);
    }
    if (write(from_child[1], &child, sizeof child) != sizeof child) _exit(1);
    int st;
    waitpid(child, &st, 0);
    // Stays until the test has read its memory.
    if (read(to_child[0], &c, 1) != 1) _exit(1);
    _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 1);
  }
  PageStore store;
  image::Process proc = ProcessWithVmas(7, base, base + kLen);
  store.Expect(proc);
  ASSERT_TRUE(store.Declare(7, base, base + kLen).ok());
  ASSERT_TRUE(
      store.Attach(7, std::make_unique<ProcessMemorySink>(parent), Delivery::kOnDemand).ok());
  std::vector<uint8_t> first = Pages(2, 'f');
  ASSERT_TRUE(store.Add({7, base, 2, first.data()}).ok());  // round 1: pages 0-1
  EXPECT_EQ(store.Missing(7), (std::vector<Range>{{base + 2 * kPage, base + kLen}}));
  // The child inherits pages 0-1 only: fill them, then fork.
  ASSERT_TRUE(store.Fill(7, base, base + 2 * kPage, true).ok());
  ASSERT_EQ(write(to_child[1], "f", 1), 1);
  pid_t child = 0;
  ASSERT_EQ(read(from_child[0], &child, sizeof child), static_cast<ssize_t>(sizeof child));
  std::vector<uint8_t> second = Pages(4, 's');
  ASSERT_TRUE(store.Add({7, base, 4, second.data()}).ok());  // round 2, after the fork
  ASSERT_TRUE(store.Fill(7, base, base + kLen, true).ok());
  EXPECT_TRUE(store.Missing(7).empty());
  ASSERT_EQ(write(to_child[1], "g", 1), 1);
  char seen[4] = {};
  ASSERT_EQ(read(from_child[0], seen, 4), 4);
  EXPECT_EQ(std::string(seen, 4), std::string("ff\0\0", 4));
  std::vector<uint8_t> in_parent(kLen);
  struct iovec local = {in_parent.data(), kLen}, remote = {region, kLen};
  ASSERT_EQ(process_vm_readv(parent, &local, 1, &remote, 1, 0), static_cast<ssize_t>(kLen));
  EXPECT_EQ(in_parent, second);
  ASSERT_EQ(write(to_child[1], "x", 1), 1);
  int st = 0;
  ASSERT_EQ(waitpid(parent, &st, 0), parent);
  cleanup.pid = -1;
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  munmap(region, kLen);
}

}  // namespace
}  // namespace stasis::mem
