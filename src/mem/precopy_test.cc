// The pre-copy on a child: pages it writes, or drops and faults back in,
// after the copy are read again while it is stopped; the rest come from the
// copy, and the store matches the child's memory page for page.
#include "mem/precopy.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "mem/mem_testing.h"
#include "sys/unique_fd.h"

namespace stasis::mem {
namespace {

using test_support::Cleanup;
using test_support::kPage;
using test_support::MapPages;
constexpr uint64_t kPages = 256;

// Fills kPages pages, reports their address, then obeys one byte at a time:
// 'w' rewrites pages 5-9, 'd' drops page 20 and reads it back (the zero
// page), 'r' maps a new VMA over the region, 'f' forks (see there), 's'
// stops itself.
[[noreturn]] void Child(int to_parent, int from_parent) {
  uint8_t* mem = MapPages(kPages);
  for (uint64_t i = 0; i < kPages * kPage; ++i) mem[i] = static_cast<uint8_t>(i * 13 + 1);
  uint64_t addr = reinterpret_cast<uint64_t>(mem);
  if (write(to_parent, &addr, sizeof addr) != sizeof addr) _exit(2);
  char cmd;
  while (read(from_parent, &cmd, 1) == 1) {
    volatile uint8_t sink = 0;
    if (cmd == 'w') {
      for (int p = 5; p < 10; ++p) memset(mem + p * kPage, 0xa5, kPage);
    } else if (cmd == 'd') {
      madvise(mem + 20 * kPage, kPage, MADV_DONTNEED);
      sink = mem[20 * kPage];
    } else if (cmd == 'r') {
      // A new VMA in the old one's place: same range, same offset.
      mmap(mem, kPages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
           0);
      memset(mem, 0x5a, kPages * kPage);
    } else if (cmd == 'f') {
      // A child that writes its copy of page 40, then page 30 written here.
      pid_t kid = fork();
      if (kid == 0) {
        memset(mem + 40 * kPage, 0x33, kPage);
        _exit(0);
      }
      waitpid(kid, nullptr, 0);
      mem[30 * kPage] = 0x77;
    } else if (cmd == 's') {
      raise(SIGSTOP);
    }
    (void)sink;
    if (write(to_parent, &cmd, 1) != 1) _exit(2);
  }
  _exit(0);
}

// Runs Child, pre-copies it, sends it `commands` and stops it, then checks
// that the store built from the copy matches its memory.
struct ChildRun {
  uint64_t addr = 0;
  std::vector<uint8_t> got;
  PrecopyStats stats;
};

void PrecopyChild(const std::string& commands, ChildRun* run) {
  int up[2], down[2];
  ASSERT_EQ(pipe2(up, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(down, O_CLOEXEC), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) Child(up[1], down[0]);
  close(up[1]);
  close(down[0]);
  sys::UniqueFd from(up[0]), to(down[1]);
  Cleanup reaper;  // kills and reaps the child
  reaper.pid = pid;
  uint64_t addr = 0;
  ASSERT_EQ(read(from.get(), &addr, sizeof addr), static_cast<ssize_t>(sizeof addr));
  Precopy precopy = Precopy::Start(pid);
  EXPECT_EQ(precopy.stats().processes_tracked, 1u);
  EXPECT_GE(precopy.stats().pages_copied, kPages);
  for (char c : commands + "s") {
    ASSERT_EQ(write(to.get(), &c, 1), 1);
    if (c != 's') {
      ASSERT_EQ(read(from.get(), &c, 1), 1);
    }
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, WUNTRACED), pid);
  ASSERT_TRUE(WIFSTOPPED(status));
  precopy.Settle();

  PagePlan plan;
  plan.runs.push_back({addr, kPages, true, true});
  Result<std::unique_ptr<PageCopies>> store = precopy.Take(pid, plan);
  ASSERT_TRUE(store.ok()) << store.error().ToString();
  std::vector<uint8_t> want(kPages * kPage);
  run->got.resize(kPages * kPage);
  struct iovec local = {want.data(), want.size()};
  struct iovec remote = {reinterpret_cast<void*>(addr), want.size()};
  ASSERT_EQ(process_vm_readv(pid, &local, 1, &remote, 1, 0), static_cast<ssize_t>(want.size()));
  ASSERT_TRUE(store.value()->Read(addr, kPages, run->got.data()).ok());
  for (uint64_t p = 0; p < kPages; ++p) {
    EXPECT_EQ(memcmp(want.data() + p * kPage, run->got.data() + p * kPage, kPage), 0)
        << "page " << p;
  }
  run->addr = addr;
  run->stats = precopy.stats();
}

TEST(Precopy, KeepsCleanPagesAndRereadsChangedOnes) {
  ChildRun run;
  PrecopyChild("wd", &run);
  EXPECT_EQ(run.got[20 * kPage], 0);
  EXPECT_EQ(run.got[5 * kPage], 0xa5);
  // Pages 5-9 written and page 20 refaulted: read again; the rest kept.
  EXPECT_EQ(run.stats.pages_read, 6u);
  EXPECT_EQ(run.stats.pages_kept, kPages - 6);
}

TEST(Precopy, AForkDuringTheCopyChangesNothingButWhatTheParentWrites) {
  ChildRun run;
  PrecopyChild("f", &run);
  EXPECT_EQ(run.got[30 * kPage], 0x77);
  EXPECT_NE(run.got[40 * kPage], 0x33);
  EXPECT_EQ(run.stats.pages_read, 1u);
  EXPECT_EQ(run.stats.pages_kept, kPages - 1);
}

TEST(Precopy, AVmaMappedAnewInTheSamePlaceIsReadWhole) {
  ChildRun run;
  PrecopyChild("r", &run);
  EXPECT_EQ(run.got[0], 0x5a);
  EXPECT_EQ(run.stats.pages_kept, 0u);
  EXPECT_EQ(run.stats.pages_read, kPages);
}

TEST(Precopy, StoreReadsAcrossRunsAndRefusesGaps) {
  PageCopies store;
  std::shared_ptr<uint8_t[]> buf(new uint8_t[3 * kPage]);
  memset(buf.get(), 1, kPage);
  memset(buf.get() + kPage, 2, 2 * kPage);
  store.Add(0x10000, 1, buf.get(), buf);
  store.Add(0x11000, 2, buf.get() + kPage, buf);
  std::vector<uint8_t> out(3 * kPage);
  ASSERT_TRUE(store.Read(0x10000, 3, out.data()).ok());
  EXPECT_EQ(out[0], 1);
  EXPECT_EQ(out[kPage], 2);
  EXPECT_EQ(out[3 * kPage - 1], 2);
  EXPECT_FALSE(store.Read(0x12000, 2, out.data()).ok());
  EXPECT_EQ(store.pages(), 3u);
}

}  // namespace
}  // namespace stasis::mem
