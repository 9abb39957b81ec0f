// Write tracking of a child's memory through a userfaultfd it created and
// this process stole, as the pre-copy uses it (sys/uffd.h).
#include "sys/uffd.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sys/pidfds.h"
#include "sys/unique_fd.h"

namespace stasis::sys::uffd {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kPages = 64;

struct Hello {
  int uffd;
  uint64_t addr;
};

// The child: maps and fills kPages pages, makes a userfaultfd, says so, then
// writes the pages named by each byte it reads (0xff: exit).
[[noreturn]] void Child(int to_parent, int from_parent) {
  auto* mem = static_cast<uint8_t*>(
      mmap(nullptr, kPages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  for (uint64_t i = 0; i < kPages * kPage; ++i) mem[i] = static_cast<uint8_t>(i * 7);
  // As the pre-copy injects it: user-mode faults only (allowed unprivileged).
  Hello hello = {
      static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)),
      reinterpret_cast<uint64_t>(mem)};
  if (write(to_parent, &hello, sizeof hello) != sizeof hello) _exit(2);
  int loop[2];
  if (pipe(loop) < 0) _exit(2);
  uint8_t page;
  while (read(from_parent, &page, 1) == 1 && page != 0xff) {
    if (page & 0x80) {
      // Written by the kernel: read(2) into the page.
      page &= 0x7f;
      if (write(loop[1], "kernel", 6) != 6 || read(loop[0], mem + page * kPage, 6) != 6) _exit(3);
    } else {
      mem[page * kPage + 100] ^= 1;
    }
    if (write(to_parent, &page, 1) != 1) _exit(2);
  }
  _exit(0);
}

class UffdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int up[2], down[2];
    ASSERT_EQ(pipe2(up, O_CLOEXEC), 0);
    ASSERT_EQ(pipe2(down, O_CLOEXEC), 0);
    pid_ = fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) Child(up[1], down[0]);
    close(up[1]);
    close(down[0]);
    from_child_ = UniqueFd(up[0]);
    to_child_ = UniqueFd(down[1]);
    ASSERT_EQ(read(from_child_.get(), &hello_, sizeof hello_), static_cast<ssize_t>(sizeof hello_));
    ASSERT_GE(hello_.uffd, 0) << "userfaultfd in the child failed";
    UniqueFd pidfd = PidfdOpen(pid_).value();
    uffd_ = PidfdGetfd(pidfd.get(), pid_, hello_.uffd).value();
    std::string path = "/proc/" + std::to_string(pid_) + "/pagemap";
    pagemap_ = UniqueFd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(pagemap_.valid());
  }
  void TearDown() override {
    uint8_t bye = 0xff;
    if (to_child_.valid()) (void)!write(to_child_.get(), &bye, 1);
    if (pid_ > 0) {
      int status = 0;
      waitpid(pid_, &status, 0);
    }
  }
  void Write(uint8_t page) {
    ASSERT_EQ(write(to_child_.get(), &page, 1), 1);
    ASSERT_EQ(read(from_child_.get(), &page, 1), 1);
  }
  std::vector<Range> Written(size_t batch = 512) {
    return WrittenRanges(pagemap_.get(), start(), start() + kPages * kPage, batch).value();
  }
  uint64_t start() const { return hello_.addr; }

  pid_t pid_ = -1;
  Hello hello_{};
  UniqueFd from_child_, to_child_, uffd_, pagemap_;
};

TEST_F(UffdTest, ReportsExactlyThePagesTheChildWrites) {
  ASSERT_TRUE(EnableWpAsync(uffd_.get()).ok());
  ASSERT_TRUE(RegisterWp(uffd_.get(), start(), start() + kPages * kPage).value());
  ASSERT_TRUE(WriteProtect(uffd_.get(), start(), start() + kPages * kPage).ok());
  EXPECT_TRUE(Written().empty());
  Write(3);
  Write(10);
  Write(11);
  Write(63);
  std::vector<Range> got = Written();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].start, start() + 3 * kPage);
  EXPECT_EQ(got[0].end, start() + 4 * kPage);
  EXPECT_EQ(got[1].start, start() + 10 * kPage);
  EXPECT_EQ(got[1].end, start() + 12 * kPage);
  EXPECT_EQ(got[2].start, start() + 63 * kPage);
  EXPECT_EQ(got[2].end, start() + 64 * kPage);
  // Scanning does not re-protect: the same pages again.
  EXPECT_EQ(Written().size(), 3u);
  // Protecting again starts over.
  ASSERT_TRUE(WriteProtect(uffd_.get(), start(), start() + kPages * kPage).ok());
  EXPECT_TRUE(Written().empty());
  Write(0);
  got = Written();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].start, start());
  EXPECT_EQ(got[0].end, start() + kPage);
}

TEST_F(UffdTest, WritesByTheKernelAreTrackedToo) {
  ASSERT_TRUE(EnableWpAsync(uffd_.get()).ok());
  ASSERT_TRUE(RegisterWp(uffd_.get(), start(), start() + kPages * kPage).value());
  ASSERT_TRUE(WriteProtect(uffd_.get(), start(), start() + kPages * kPage).ok());
  Write(0x80 | 7);  // the child exits with 3 if read(2) into the page fails
  std::vector<Range> got = Written();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].start, start() + 7 * kPage);
  EXPECT_EQ(got[0].end, start() + 8 * kPage);
}

TEST_F(UffdTest, ScanWalksPastAFullResultVector) {
  ASSERT_TRUE(EnableWpAsync(uffd_.get()).ok());
  ASSERT_TRUE(RegisterWp(uffd_.get(), start(), start() + kPages * kPage).value());
  ASSERT_TRUE(WriteProtect(uffd_.get(), start(), start() + kPages * kPage).ok());
  // Every other page: 32 separate ranges.
  for (uint8_t p = 0; p < kPages; p += 2) Write(p);
  std::vector<Range> got = Written(5);
  ASSERT_EQ(got.size(), kPages / 2);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].start, start() + 2 * i * kPage);
}

TEST_F(UffdTest, ScanOfARangeNotAllRegisteredFailsWithEperm) {
  ASSERT_TRUE(EnableWpAsync(uffd_.get()).ok());
  Result<std::vector<Range>> r = WrittenRanges(pagemap_.get(), start(), start() + kPage);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().errnum(), EPERM);
  ASSERT_TRUE(RegisterWp(uffd_.get(), start(), start() + kPages / 2 * kPage).value());
  r = WrittenRanges(pagemap_.get(), start(), start() + kPages * kPage);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().errnum(), EPERM);
  r = WrittenRanges(pagemap_.get(), start(), start() + kPages / 2 * kPage);
  ASSERT_TRUE(r.ok());
}

TEST_F(UffdTest, PresentRangesSkipsHoles) {
  // Page 0 has never been touched in a fresh mapping of this process.
  const uint64_t len = 1ull << 30;
  auto* mem = static_cast<uint8_t*>(mmap(nullptr, len, PROT_READ | PROT_WRITE,
                                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  ASSERT_NE(mem, MAP_FAILED);
  mem[5 * kPage] = 1;
  mem[len - kPage] = 1;
  UniqueFd self(open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  auto start = reinterpret_cast<uint64_t>(mem);
  std::vector<Range> got = PresentRanges(self.get(), start, start + len).value();
  munmap(mem, len);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].start, start + 5 * kPage);
  EXPECT_EQ(got[0].end, start + 6 * kPage);
  EXPECT_EQ(got[1].start, start + len - kPage);
}

TEST_F(UffdTest, SecondRegistrationOfARangeIsRefusedNotAnError) {
  ASSERT_TRUE(EnableWpAsync(uffd_.get()).ok());
  ASSERT_TRUE(RegisterWp(uffd_.get(), start(), start() + kPages * kPage).value());
  // The child's own copy of the uffd is the same context: registering with a
  // second, new uffd of this process would be for another mm (EINVAL).
  UniqueFd other(static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
  ASSERT_TRUE(other.valid());
  ASSERT_TRUE(EnableWpAsync(other.get()).ok());
  Result<bool> r = RegisterWp(other.get(), start(), start() + kPages * kPage);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r.value());
}

}  // namespace
}  // namespace stasis::sys::uffd
