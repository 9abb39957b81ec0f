// The page server on a real, stopped child: every deferred page once, in
// address order and chunks of at most 1 MiB; requests first with their
// prefetch window; a restart sending only what the destination lacks.
#include "mem/page_server.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <thread>

#include "mem/mem_testing.h"

namespace stasis::mem {
namespace {

using test_support::Cleanup;
using test_support::kPage;
using test_support::MapPages;
constexpr uint64_t kPages = 400;
constexpr uint64_t kLockedFrom = 380;  // PROT_NONE from here: /proc/PID/mem reads them

// Each page holds its own address, then its index; the last pages are
// made PROT_NONE. Reports the base, then waits to be killed.
[[noreturn]] void Child(int to_parent) {
  uint8_t* mem = MapPages(kPages);
  if (mem == MAP_FAILED) _exit(1);
  for (uint64_t i = 0; i < kPages; ++i) {
    uint8_t* page = mem + i * kPage;
    memset(page, static_cast<int>(i & 0xff), kPage);
    uint64_t addr = reinterpret_cast<uint64_t>(page);
    memcpy(page, &addr, sizeof addr);
  }
  if (mprotect(mem + kLockedFrom * kPage, (kPages - kLockedFrom) * kPage, PROT_NONE) != 0) _exit(1);
  uint64_t base = reinterpret_cast<uint64_t>(mem);
  if (write(to_parent, &base, sizeof base) != sizeof base) _exit(1);
  for (;;) pause();
}

struct Sent {
  uint32_t pid;
  uint64_t addr;
  uint64_t npages;
};

// A stopped child, as the dump leaves the tree, and what was sent of it.
class PageServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int up[2];
    ASSERT_EQ(pipe(up), 0);
    cleanup_.fds = {up[0], up[1]};
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) Child(up[1]);
    cleanup_.pid = pid;
    ASSERT_EQ(read(up[0], &base_, sizeof base_), static_cast<ssize_t>(sizeof base_));
    ASSERT_EQ(kill(pid, SIGSTOP), 0);
  }
  uint64_t Page(uint64_t i) const { return base_ + i * kPage; }
  Range Pages(uint64_t from, uint64_t to) const { return {Page(from), Page(to)}; }
  // A with [0, 40) and B with [42, 400): a hole of two pages between.
  PageServer::Process Proc(uint32_t pid) const {
    return {cleanup_.pid, pid, {Pages(42, kPages), Pages(0, 40)}};
  }
  // Checks each page's contents and counts it.
  SendRun Recorder() {
    return [this](uint32_t pid, uint64_t addr, uint64_t npages, const uint8_t* data) {
      sent_.push_back({pid, addr, npages});
      for (uint64_t i = 0; i < npages; ++i) {
        uint64_t at = addr + i * kPage, held;
        memcpy(&held, data + i * kPage, sizeof held);
        EXPECT_EQ(held, at) << "page at " << std::hex << at;
        EXPECT_EQ(data[i * kPage + kPage - 1], ((at - base_) / kPage) & 0xff);
        ++count_[{pid, at}];
      }
      return Ok();
    };
  }
  // The chunks SendNext sends until it has nothing more.
  void SendAll(PageServer& server) {
    for (int i = 0; i < 10000; ++i) {
      Result<bool> more = server.SendNext(Recorder());
      ASSERT_TRUE(more.ok()) << more.error().ToString();
      if (!*more) return;
    }
    FAIL() << "SendNext never ended";
  }
  // Every deferred page of pid exactly once, nothing else.
  void ExpectEachOnce(uint32_t pid) {
    uint64_t pages = 0;
    for (uint64_t i = 0; i < kPages; ++i) {
      bool deferred = i < 40 || i >= 42;
      auto it = count_.find({pid, Page(i)});
      int times = it == count_.end() ? 0 : it->second;
      EXPECT_EQ(times, deferred ? 1 : 0) << "page " << i;
      pages += times;
    }
    EXPECT_EQ(pages, kPages - 2);
  }

  Cleanup cleanup_;
  uint64_t base_ = 0;
  std::vector<Sent> sent_;
  std::map<std::pair<uint32_t, uint64_t>, int> count_;
};

TEST_F(PageServerTest, SendsEveryPageOnceInAddressOrderInChunksOfAtMostOneMiB) {
  PageServer server({Proc(7), Proc(8)});
  EXPECT_EQ(server.unsent_bytes(), 2 * (kPages - 2) * kPage);
  SendAll(server);
  ExpectEachOnce(7);
  ExpectEachOnce(8);
  // Process by process, each in address order.
  for (size_t i = 1; i < sent_.size(); ++i) {
    EXPECT_LE(sent_[i].npages * kPage, PageServer::kChunkBytes);
    if (sent_[i].pid == sent_[i - 1].pid) {
      EXPECT_GE(sent_[i].addr, sent_[i - 1].addr + sent_[i - 1].npages * kPage);
    } else {
      EXPECT_EQ(sent_[i - 1].pid, 7u);
    }
  }
  // [0, 40) whole, then [42, 400) in two chunks: 256 pages and the rest.
  ASSERT_EQ(sent_.size(), 6u);
  EXPECT_EQ(sent_[1].addr, Page(42));
  EXPECT_EQ(sent_[1].npages, PageServer::kChunkBytes / kPage);
  EXPECT_EQ(server.unsent_bytes(), 0u);
  EXPECT_EQ(server.stats().pages_sent, 2 * (kPages - 2));
}

TEST_F(PageServerTest, RequestsGoFirstWithTheirWindowWithinTheDeferredRanges) {
  PageServer server({Proc(7)});
  // Oldest request first, 16 KiB before the page and 64 KiB after, within
  // the deferred ranges; the piece holding the faulting page first.
  server.Request(7, Page(100) + 123);  // [96, 116)
  server.Request(7, Page(42));         // [38, 58): [42, 58) then [38, 40)
  server.Request(7, Page(41));         // in the hole: nothing to send
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(server.SendNext(Recorder()).ok());
  ASSERT_EQ(sent_.size(), 3u);
  EXPECT_EQ(sent_[0].addr, Page(96));
  EXPECT_EQ(sent_[0].npages, 20u);
  EXPECT_EQ(sent_[1].addr, Page(42));
  EXPECT_EQ(sent_[1].npages, 16u);
  EXPECT_EQ(sent_[2].addr, Page(38));
  EXPECT_EQ(sent_[2].npages, 2u);
  // The background goes on around what requests took; a request for a
  // page sent already changes nothing.
  server.Request(7, Page(100));
  ASSERT_TRUE(server.SendNext(Recorder()).ok());
  ASSERT_TRUE(server.SendNext(Recorder()).ok());
  EXPECT_EQ(sent_[3].addr, Page(0));
  EXPECT_EQ(sent_[3].npages, 38u);
  EXPECT_EQ(sent_[4].addr, Page(58));
  EXPECT_EQ(sent_[4].npages, 96u - 58u);
  server.Request(7, Page(120));
  ASSERT_TRUE(server.SendNext(Recorder()).ok());
  EXPECT_EQ(sent_[5].addr, Page(116));
  EXPECT_EQ(sent_[5].npages, 20u);
  SendAll(server);
  ExpectEachOnce(7);
  EXPECT_EQ(server.stats().requests, 5u);
  EXPECT_EQ(server.stats().requested_pages, 20u + 16 + 2 + 20);
}

TEST_F(PageServerTest, RequestsFromAnotherThreadAreTakenBetweenChunks) {
  PageServer server({Proc(7)});
  std::thread asker([&server, this] {
    for (uint64_t i = 50; i < kPages; i += 30) server.Request(7, Page(i));
  });
  SendAll(server);
  asker.join();
  SendAll(server);
  ExpectEachOnce(7);
}

TEST_F(PageServerTest, RestartSendsOnlyWhatTheDestinationLacks) {
  PageServer server({Proc(7)});
  SendAll(server);
  server.Request(7, Page(200));  // lost with the link: dropped by Restart
  // [39, 45) spans the hole; [500, 510) is past every deferred range.
  server.Restart(7, {Pages(10, 12), Pages(39, 45), Pages(500, 510)});
  EXPECT_EQ(server.unsent_bytes(), 6 * kPage);
  sent_.clear();
  count_.clear();
  SendAll(server);
  std::vector<uint64_t> pages;
  for (const auto& [key, times] : count_) {
    EXPECT_EQ(times, 1);
    pages.push_back((key.second - base_) / kPage);
  }
  EXPECT_EQ(pages, (std::vector<uint64_t>{10, 11, 39, 42, 43, 44}));
  Result<bool> more = server.SendNext(Recorder());
  ASSERT_TRUE(more.ok());
  EXPECT_FALSE(*more);
}

TEST_F(PageServerTest, FailedSendNamesTheRangeAndIsNotResentByItself) {
  PageServer server({Proc(7)});
  Result<bool> failed = server.SendNext([](uint32_t, uint64_t, uint64_t, const uint8_t*) -> Status {
    return Error(ErrorCode::kFailed, "link down");
  });
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.error().message().find("of pid 7"), std::string::npos)
      << failed.error().ToString();
  SendAll(server);
  EXPECT_EQ(count_.count({7, Page(0)}), 0u);
  server.Restart(7, {Pages(0, 40)});
  SendAll(server);
  ExpectEachOnce(7);
}

}  // namespace
}  // namespace stasis::mem
