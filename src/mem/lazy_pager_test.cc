// The lazy pager on a real process: its pages come on fault from the
// store (held pages copied, the rest the zero page), before any push.
#include "mem/lazy_pager.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mem/mem_testing.h"
#include "sys/pidfds.h"
#include "sys/uffd.h"

namespace stasis::mem {
namespace {

using test_support::Cleanup;
using test_support::kPage;
using test_support::MapPages;
constexpr uint64_t kPages = 64;

// Maps kPages pages, makes a userfaultfd, reports both, then on 'g' reads
// the first byte of every page and reports them.
[[noreturn]] void Child(int to_parent, int from_parent) {
  uint8_t* mem = MapPages(kPages);
  long uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  uint64_t report[2] = {reinterpret_cast<uint64_t>(mem), static_cast<uint64_t>(uffd)};
  if (mem == MAP_FAILED || uffd < 0 || write(to_parent, report, sizeof report) != sizeof report)
    _exit(1);
  char c;
  if (read(from_parent, &c, 1) != 1) _exit(1);
  uint8_t seen[kPages];
  for (uint64_t i = 0; i < kPages; ++i) seen[i] = mem[i * kPage];
  _exit(write(to_parent, seen, sizeof seen) == sizeof seen ? 0 : 1);
}

TEST(LazyPager, ServesFaultsFromTheStoreBeforeAnyPush) {
  int up[2], down[2];
  ASSERT_EQ(pipe(up), 0);
  ASSERT_EQ(pipe(down), 0);
  Cleanup cleanup;
  cleanup.fds = {up[0], up[1], down[0], down[1]};
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) Child(up[1], down[0]);
  cleanup.pid = pid;
  uint64_t report[2];
  ASSERT_EQ(read(up[0], report, sizeof report), static_cast<ssize_t>(sizeof report));
  uint64_t base = report[0];
  {
    sys::UniqueFd pidfd = sys::PidfdOpen(pid).value();
    Result<sys::UniqueFd> uffd = sys::PidfdGetfd(pidfd.get(), pid, static_cast<int>(report[1]));
    ASSERT_TRUE(uffd.ok()) << uffd.error().ToString();
    ASSERT_TRUE(sys::uffd::EnableMissing(uffd->get()).ok());
    ASSERT_TRUE(sys::uffd::RegisterMissing(uffd->get(), base, base + kPages * kPage).ok());

    auto store = std::make_unique<PageStore>();
    image::Process proc;
    proc.set_pid(7);
    image::Vma* vma = proc.add_vmas();
    vma->set_start(base);
    vma->set_end(base + kPages * kPage);
    vma->set_has_pages(true);
    store->Expect(proc);
    // Even pages hold their index; odd ones are zero pages left out.
    for (uint64_t i = 0; i < kPages; i += 2) {
      std::vector<uint8_t> page(kPage, static_cast<uint8_t>(i));
      ASSERT_TRUE(store->Add({7, base + i * kPage, 1, page.data()}).ok());
    }
    LazyPager pager(std::move(store));
    ASSERT_TRUE(pager.Serve(7, std::move(uffd).value(), {{base, base + kPages * kPage}}).ok());
    ASSERT_TRUE(pager.store().Attach(7, pager.SinkFor(7, pid), Delivery::kOnDemand).ok());
    ASSERT_EQ(write(down[1], "g", 1), 1);
    uint8_t seen[kPages] = {};
    ASSERT_EQ(read(up[0], seen, sizeof seen), static_cast<ssize_t>(sizeof seen));
    for (uint64_t i = 0; i < kPages; ++i) EXPECT_EQ(seen[i], i % 2 ? 0 : i) << "page " << i;
    pager.Release();
    ASSERT_TRUE(pager.Wait().ok());
    EXPECT_GT(pager.stats().faults, 0u);
    EXPECT_GT(pager.stats().zero_faults, 0u);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  cleanup.pid = -1;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

}  // namespace
}  // namespace stasis::mem
