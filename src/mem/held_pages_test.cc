// Held pages: later rounds replace earlier ones, Give moves ranges into a
// page store (which writes them into the process it is attached to), and a
// range the source wrongly says is held is refused whole.
#include "mem/held_pages.h"

#include <gtest/gtest.h>

#include <map>
#include <vector>

namespace stasis::mem {
namespace {

constexpr uint64_t kPage = image::kPageSize;
constexpr uint64_t kBase = 0x10000000;

image::Process ProcessWith(int pid, uint64_t start, uint64_t end) {
  image::Process p;
  p.set_pid(pid);
  image::Vma* v = p.add_vmas();
  v->set_start(start);
  v->set_end(end);
  v->set_has_pages(true);
  return p;
}

std::vector<uint8_t> Pages(uint64_t n, uint8_t fill) {
  return std::vector<uint8_t>(n * kPage, fill);
}

// The first byte of every page written, by address.
class FirstBytes : public PageSink {
 public:
  explicit FirstBytes(std::map<uint64_t, uint8_t>* pages) : pages_(pages) {}
  Status Write(uint64_t addr, const uint8_t* data, uint64_t len) override {
    for (uint64_t off = 0; off < len; off += kPage) (*pages_)[addr + off] = data[off];
    return Ok();
  }

 private:
  std::map<uint64_t, uint8_t>* pages_;
};

TEST(HeldPages, LaterRoundsReplaceEarlierOnesAndGiveMovesThem) {
  HeldPages held;
  ASSERT_TRUE(held.Add(7, kBase, 8, Pages(8, 1).data()).ok());
  ASSERT_TRUE(held.Add(7, kBase + 2 * kPage, 3, Pages(3, 2).data()).ok());  // inside
  ASSERT_TRUE(held.Add(7, kBase + 7 * kPage, 2, Pages(2, 3).data()).ok());  // past the end
  ASSERT_TRUE(held.Add(8, kBase, 1, Pages(1, 9).data()).ok());
  EXPECT_EQ(held.bytes(), 10 * kPage);

  PageStore store;
  store.Expect(ProcessWith(7, kBase, kBase + 16 * kPage));
  std::map<uint64_t, uint8_t> written;
  ASSERT_TRUE(store.Attach(7, std::make_unique<FirstBytes>(&written)).ok());
  Status s = held.Give(7, kBase + kPage, 8, store);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  std::vector<uint8_t> want = {1, 2, 2, 2, 1, 1, 3, 3};
  for (uint64_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(written[kBase + (i + 1) * kPage], want[i]) << "page " << i + 1;
  }
  EXPECT_EQ(written.size(), 8u);
  EXPECT_EQ(store.pages_received(), 8u);
  // Given pages are no longer held: pages 0 of pid 7 and pid 8's remain.
  EXPECT_EQ(held.bytes(), 2 * kPage);
  EXPECT_FALSE(held.Give(7, kBase + kPage, 1, store).ok());
  ASSERT_TRUE(held.Give(7, kBase, 1, store).ok());
  EXPECT_EQ(written[kBase], 1);
  held.Clear();
  EXPECT_EQ(held.bytes(), 0u);
}

TEST(HeldPages, GiveIntoAStoreNotYetAttachedHoldsThemThere) {
  HeldPages held;
  ASSERT_TRUE(held.Add(3, kBase, 4, Pages(4, 5).data()).ok());
  PageStore store;
  store.Expect(ProcessWith(3, kBase, kBase + 4 * kPage));
  ASSERT_TRUE(held.Give(3, kBase, 4, store).ok());
  std::map<uint64_t, uint8_t> written;
  ASSERT_TRUE(store.Attach(3, std::make_unique<FirstBytes>(&written)).ok());
  EXPECT_EQ(written.size(), 4u);
  EXPECT_EQ(written[kBase + 3 * kPage], 5);
}

TEST(HeldPages, RefusesARangeNotWhollyHeldAndGivesNothing) {
  HeldPages held;
  ASSERT_TRUE(held.Add(7, kBase, 2, Pages(2, 1).data()).ok());
  ASSERT_TRUE(held.Add(7, kBase + 3 * kPage, 1, Pages(1, 1).data()).ok());
  PageStore store;
  store.Expect(ProcessWith(7, kBase, kBase + 16 * kPage));
  Status s = held.Give(7, kBase, 4, store);  // page 2 never came
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(s.error().message().find("pid 7"), std::string::npos) << s.error().message();
  EXPECT_NE(s.error().message().find("0x10002000"), std::string::npos) << s.error().message();
  EXPECT_EQ(store.pages_received(), 0u);
  EXPECT_EQ(held.bytes(), 3 * kPage);
  EXPECT_FALSE(held.Give(9, kBase, 1, store).ok());  // a pid never seen
  // Outside what the store expects: the store refuses it.
  PageStore narrow;
  narrow.Expect(ProcessWith(7, kBase + 8 * kPage, kBase + 9 * kPage));
  EXPECT_EQ(held.Give(7, kBase, 2, narrow).error().code(), ErrorCode::kCorrupt);
  EXPECT_FALSE(held.Add(7, kBase + 1, 1, Pages(1, 1).data()).ok());
}

}  // namespace
}  // namespace stasis::mem
