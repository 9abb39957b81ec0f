#include "kinds/eventfd.h"
#include "kinds/kind_testing.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <climits>

#include "eventfd.pb.h"
#include "sys/proc.h"

namespace stasis::kinds::eventfd {
namespace {

// What the checkpoint layer would hand the kind for our own fd.
using fd_testing::InputFor;

std::string FdInfoValue(int fd, const std::string& key) {
  FdDumpInput in = InputFor(fd);
  for (const auto& [k, v] : in.info.extra) {
    if (k == key) return v;
  }
  return "(missing)";
}

void SetExtra(FdDumpInput& in, const std::string& key, const std::string& value) {
  for (auto& [k, v] : in.info.extra) {
    if (k == key) v = value;
  }
}

void DropExtra(FdDumpInput& in, const std::string& key) {
  std::erase_if(in.info.extra, [&](const auto& kv) { return kv.first == key; });
}

// An eventfd holding `counter`, which may exceed what eventfd() takes.
sys::UniqueFd MakeEventfd(uint64_t counter, int flags) {
  sys::UniqueFd fd(::eventfd(0, flags | EFD_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  if (counter != 0) {
    EXPECT_EQ(write(fd.get(), &counter, sizeof counter), 8);
  }
  return fd;
}

Result<image::File> DumpFd(int fd) {
  DumpContext ctx;
  FdDumpInput in = InputFor(fd);
  EXPECT_TRUE(Matches(in)) << in.link;
  image::File file;
  file.set_id(1);
  file.set_kind(kName);
  STASIS_TRY(Dump(ctx, in, &file));
  return file;
}

struct Case {
  uint64_t counter;
  bool semaphore;
  bool nonblock;
};

class EventfdRoundTrip : public testing::TestWithParam<Case> {};

TEST_P(EventfdRoundTrip, KeepsCounterModeAndFlags) {
  const Case& c = GetParam();
  int flags = (c.semaphore ? EFD_SEMAPHORE : 0) | (c.nonblock ? EFD_NONBLOCK : 0);
  sys::UniqueFd original = MakeEventfd(c.counter, flags);
  Result<image::File> file = DumpFd(original.get());
  ASSERT_TRUE(file.ok()) << file.error().ToString();
  image::EventfdState state;
  ASSERT_TRUE(file->state().UnpackTo(&state));
  EXPECT_EQ(state.counter(), c.counter);
  EXPECT_EQ(state.semaphore(), c.semaphore);
  EXPECT_EQ((state.flags() & O_NONBLOCK) != 0, c.nonblock);
  EXPECT_EQ(state.flags() & O_ACCMODE, static_cast<uint32_t>(O_RDWR));

  RestoreContext rctx;
  Result<sys::UniqueFd> restored = Restore(rctx, file.value());
  ASSERT_TRUE(restored.ok()) << restored.error().ToString();
  int fd = restored->get();
  EXPECT_EQ(FdInfoValue(fd, "eventfd-count"), FdInfoValue(original.get(), "eventfd-count"));
  EXPECT_EQ(FdInfoValue(fd, "eventfd-semaphore"), c.semaphore ? "1" : "0");
  EXPECT_EQ(fcntl(fd, F_GETFL), fcntl(original.get(), F_GETFL));
  EXPECT_TRUE(fcntl(fd, F_GETFD) & FD_CLOEXEC);
  if (c.counter == 0) return;
  uint64_t value = 0;
  ASSERT_EQ(read(fd, &value, sizeof value), 8);
  EXPECT_EQ(value, c.semaphore ? 1 : c.counter);
  // The dump read fdinfo only: the original still holds its count.
  ASSERT_EQ(read(original.get(), &value, sizeof value), 8);
  EXPECT_EQ(value, c.semaphore ? 1 : c.counter);
}

INSTANTIATE_TEST_SUITE_P(EventfdCounters, EventfdRoundTrip,
                         testing::Values(Case{0, false, false}, Case{5, false, true},
                                         Case{UINT_MAX, false, false},
                                         Case{(1ull << 33) + 7, false, false},
                                         Case{ULLONG_MAX - 1, false, true}, Case{3, true, true},
                                         Case{(1ull << 40), true, false}));

TEST(EventfdTest, SemaphoreReadsOneAtATime) {
  sys::UniqueFd original = MakeEventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
  Result<image::File> file = DumpFd(original.get());
  ASSERT_TRUE(file.ok()) << file.error().ToString();
  RestoreContext rctx;
  Result<sys::UniqueFd> restored = Restore(rctx, file.value());
  ASSERT_TRUE(restored.ok()) << restored.error().ToString();
  uint64_t value = 0;
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(read(restored->get(), &value, sizeof value), 8);
    EXPECT_EQ(value, 1u);
  }
  EXPECT_EQ(read(restored->get(), &value, sizeof value), -1);
  EXPECT_EQ(errno, EAGAIN);
}

TEST(EventfdTest, MatchesOnlyEventfds) {
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  sys::UniqueFd r(p[0]), w(p[1]);
  EXPECT_FALSE(Matches(InputFor(r.get())));
  sys::UniqueFd efd = MakeEventfd(0, 0);
  EXPECT_TRUE(Matches(InputFor(efd.get())));
}

TEST(EventfdTest, RefusesWithoutSemaphoreLine) {
  sys::UniqueFd efd = MakeEventfd(2, 0);
  FdDumpInput in = InputFor(efd.get());
  DropExtra(in, "eventfd-semaphore");
  DumpContext ctx;
  image::File file;
  Status s = Dump(ctx, in, &file);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(s.error().message().find(fmt::format("pid {} fd {}", getpid(), efd.get())),
            std::string::npos)
      << s.error().message();
  EXPECT_NE(s.error().message().find("eventfd-semaphore"), std::string::npos);
}

TEST(EventfdTest, RefusesACounterNoWriteCanRecreate) {
  sys::UniqueFd efd = MakeEventfd(2, 0);
  FdDumpInput in = InputFor(efd.get());
  SetExtra(in, "eventfd-count", "ffffffffffffffff");
  DumpContext ctx;
  image::File file;
  Status s = Dump(ctx, in, &file);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kUnsupported) << s.error().ToString();
}

TEST(EventfdTest, RejectsMalformedFdinfo) {
  sys::UniqueFd efd = MakeEventfd(2, 0);
  for (auto [key, value] : {std::pair{"eventfd-count", "12zz"},
                            {"eventfd-count", ""},
                            {"eventfd-semaphore", "2"},
                            {"eventfd-semaphore", "yes"}}) {
    FdDumpInput in = InputFor(efd.get());
    SetExtra(in, key, value);
    DumpContext ctx;
    image::File file;
    Status s = Dump(ctx, in, &file);
    ASSERT_FALSE(s.ok()) << key << "=" << value;
    EXPECT_EQ(s.error().code(), ErrorCode::kInvalid) << s.error().ToString();
  }
  FdDumpInput in = InputFor(efd.get());
  DropExtra(in, "eventfd-count");
  DumpContext ctx;
  image::File file;
  EXPECT_FALSE(Dump(ctx, in, &file).ok());
}

TEST(EventfdTest, RestoreRejectsForeignOrBadState) {
  RestoreContext rctx;
  image::File file;
  file.set_kind(kName);
  image::File other;  // any message that is not an EventfdState
  file.mutable_state()->PackFrom(other);
  Result<sys::UniqueFd> r = Restore(rctx, file);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);

  image::EventfdState state;
  state.set_counter(ULLONG_MAX);
  file.mutable_state()->PackFrom(state);
  r = Restore(rctx, file);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
}

}  // namespace
}  // namespace stasis::kinds::eventfd
