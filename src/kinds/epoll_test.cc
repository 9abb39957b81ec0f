#include "kinds/epoll.h"
#include "kinds/kind_testing.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>

#include "epoll.pb.h"
#include "sys/pidfds.h"
#include "sys/proc.h"

namespace stasis::kinds::epoll {
namespace {

constexpr uint32_t kErrHup = EPOLLERR | EPOLLHUP;

using fd_testing::InputFor;

// The fd table of this process as the checkpoint layer describes it: one
// file id per open file description; fd_of_file is an fd holding each.
struct SelfFds {
  DumpContext ctx;
  std::map<uint64_t, int> fd_of_file;
};

SelfFds Snapshot() {
  SelfFds out;
  Result<std::vector<int>> fds = sys::proc::ListFds(getpid());
  EXPECT_TRUE(fds.ok());
  for (int fd : fds.ok() ? fds.value() : std::vector<int>()) {
    if (fcntl(fd, F_GETFD) < 0) continue;  // the directory ListFds read
    FdDumpInput in = InputFor(fd);
    uint64_t id = 0;
    for (const auto& [other, other_id] : out.ctx.file_of_fd) {
      if (sys::SameFile(getpid(), other, getpid(), fd).value()) id = other_id;
    }
    if (id == 0) id = out.fd_of_file.size() + 1;
    out.fd_of_file.emplace(id, fd);
    out.ctx.fd_index.push_back({getpid(), fd, in.link, in.info.flags});
    out.ctx.file_of_fd[fd] = id;
  }
  return out;
}

Result<image::File> DumpEpoll(SelfFds& self, int ep) {
  FdDumpInput in = InputFor(ep);
  EXPECT_TRUE(Matches(in)) << in.link;
  image::File file;
  file.set_id(self.ctx.file_of_fd.at(ep));
  file.set_kind(kName);
  STASIS_TRY(Dump(self.ctx, in, &file));
  return file;
}

// Restores onto the same target files, found in local_fds at the given fds.
Result<sys::UniqueFd> RestoreEpoll(const SelfFds& self, const image::File& file) {
  RestoreContext rctx;
  for (const auto& [id, fd] : self.fd_of_file) {
    if (id != file.id()) rctx.local_fds[id] = fd;
  }
  return Restore(rctx, file);
}

// The "tfd:" lines of an epoll's fdinfo, sorted.
std::vector<std::string> Items(int ep) {
  std::vector<std::string> out;
  for (const auto& [k, v] : InputFor(ep).info.extra) {
    if (k == "tfd") out.push_back(v);
  }
  std::sort(out.begin(), out.end());
  return out;
}

int Add(int ep, int fd, uint32_t events, uint64_t data, int op = EPOLL_CTL_ADD) {
  epoll_event ev = {};
  ev.events = events;
  ev.data.u64 = data;
  return epoll_ctl(ep, op, fd, &ev);
}

// Ready events as sorted (data, events) pairs.
std::vector<std::pair<uint64_t, uint32_t>> Ready(int ep) {
  epoll_event evs[16];
  int n = epoll_wait(ep, evs, 16, 0);
  EXPECT_GE(n, 0);
  std::vector<std::pair<uint64_t, uint32_t>> out;
  for (int i = 0; i < n; ++i) {
    uint64_t data = evs[i].data.u64;  // epoll_event is packed
    uint32_t events = evs[i].events;
    out.emplace_back(data, events);
  }
  std::sort(out.begin(), out.end());
  return out;
}

struct Fixture {
  sys::UniqueFd ep{epoll_create1(EPOLL_CLOEXEC)};
  sys::UniqueFd pr, pw;
  sys::UniqueFd ready{eventfd(1, EFD_CLOEXEC)};
  sys::UniqueFd idle{eventfd(0, EFD_CLOEXEC)};
  Fixture() {
    int p[2];
    EXPECT_EQ(pipe2(p, O_CLOEXEC), 0);
    pr.reset(p[0]);
    pw.reset(p[1]);
  }
};

TEST(EpollTest, RoundTripKeepsEveryItem) {
  Fixture f;
  ASSERT_EQ(Add(f.ep.get(), f.pr.get(), EPOLLIN, 0x1122334455667788), 0);
  ASSERT_EQ(Add(f.ep.get(), f.pw.get(), EPOLLOUT | EPOLLET, 2), 0);
  ASSERT_EQ(Add(f.ep.get(), f.ready.get(), EPOLLIN | EPOLLONESHOT, 3), 0);
  ASSERT_EQ(Add(f.ep.get(), f.idle.get(), EPOLLIN | EPOLLEXCLUSIVE | EPOLLWAKEUP, 4), 0);
  ASSERT_EQ(fcntl(f.ep.get(), F_SETFL, O_NONBLOCK), 0);
  SelfFds self = Snapshot();
  Result<image::File> file = DumpEpoll(self, f.ep.get());
  ASSERT_TRUE(file.ok()) << file.error().ToString();
  image::EpollState state;
  ASSERT_TRUE(file->state().UnpackTo(&state));
  ASSERT_EQ(state.items_size(), 4);
  for (const image::EpollItem& item : state.items()) {
    EXPECT_EQ(item.file_id(), self.ctx.file_of_fd.at(item.tfd()));
    if (item.data() == 4) {
      // EPOLLWAKEUP only stays with CONFIG_PM_SLEEP and CAP_BLOCK_SUSPEND.
      EXPECT_EQ(item.events() & ~EPOLLWAKEUP, EPOLLIN | EPOLLEXCLUSIVE | kErrHup);
      EXPECT_EQ(item.target_link(), "anon_inode:[eventfd]");
    }
  }
  Result<sys::UniqueFd> restored = RestoreEpoll(self, file.value());
  ASSERT_TRUE(restored.ok()) << restored.error().ToString();
  EXPECT_EQ(Items(restored->get()), Items(f.ep.get()));
  EXPECT_EQ(fcntl(restored->get(), F_GETFL), fcntl(f.ep.get(), F_GETFL));
  EXPECT_EQ(Ready(restored->get()), Ready(f.ep.get()));
  // Keyed by the same (file, fd number): the task's own ADD/MOD see them.
  EXPECT_EQ(Add(restored->get(), f.pr.get(), EPOLLIN, 9), -1);
  EXPECT_EQ(errno, EEXIST);
  EXPECT_EQ(Add(restored->get(), f.pr.get(), EPOLLIN, 9, EPOLL_CTL_MOD), 0);
}

TEST(EpollTest, RestorePutsBackWhatHeldTheItemNumbers) {
  Fixture f;
  ASSERT_EQ(Add(f.ep.get(), f.ready.get(), EPOLLIN, 7), 0);
  SelfFds self = Snapshot();
  Result<image::File> file = DumpEpoll(self, f.ep.get());
  ASSERT_TRUE(file.ok()) << file.error().ToString();
  // The restored target is another eventfd, away from the item's number,
  // where the restorer has something else (with FD_CLOEXEC off).
  sys::UniqueFd fresh(eventfd(5, EFD_CLOEXEC));
  sys::UniqueFd keep(fcntl(f.ready.get(), F_DUPFD_CLOEXEC, 0));
  ASSERT_EQ(fcntl(f.ready.get(), F_SETFD, 0), 0);
  RestoreContext rctx;
  rctx.local_fds[self.ctx.file_of_fd.at(f.ready.get())] = fresh.get();
  Result<sys::UniqueFd> restored = Restore(rctx, file.value());
  ASSERT_TRUE(restored.ok()) << restored.error().ToString();
  EXPECT_TRUE(sys::SameFile(getpid(), f.ready.get(), getpid(), keep.get()).value());
  EXPECT_EQ(fcntl(f.ready.get(), F_GETFD), 0);
  std::vector<std::string> items = Items(restored->get());
  ASSERT_EQ(items.size(), 1u);
  EXPECT_TRUE(items[0].starts_with(std::to_string(f.ready.get()) + " ")) << items[0];
  uint64_t value = 0;
  ASSERT_EQ(read(fresh.get(), &value, sizeof value), 8);
  EXPECT_EQ(Ready(restored->get()).size(), 0u);  // watches `fresh`, now empty
}

TEST(EpollTest, FiredOneShotStaysDisarmed) {
  Fixture f;
  ASSERT_EQ(Add(f.ep.get(), f.ready.get(), EPOLLIN | EPOLLONESHOT | EPOLLET, 5), 0);
  ASSERT_EQ(Add(f.ep.get(), f.pw.get(), EPOLLOUT | EPOLLONESHOT, 6), 0);
  ASSERT_EQ(Ready(f.ep.get()).size(), 2u);
  SelfFds self = Snapshot();
  Result<image::File> file = DumpEpoll(self, f.ep.get());
  ASSERT_TRUE(file.ok()) << file.error().ToString();
  image::EpollState state;
  ASSERT_TRUE(file->state().UnpackTo(&state));
  for (const image::EpollItem& item : state.items()) {
    EXPECT_EQ(item.events() & ~(EPOLLONESHOT | EPOLLET), 0u) << item.DebugString();
  }
  Result<sys::UniqueFd> restored = RestoreEpoll(self, file.value());
  ASSERT_TRUE(restored.ok()) << restored.error().ToString();
  EXPECT_EQ(Items(restored->get()), Items(f.ep.get()));
  EXPECT_EQ(Ready(restored->get()).size(), 0u);
  ASSERT_EQ(Add(restored->get(), f.ready.get(), EPOLLIN | EPOLLONESHOT, 8, EPOLL_CTL_MOD), 0);
  EXPECT_EQ(Ready(restored->get()), (std::vector<std::pair<uint64_t, uint32_t>>{{8, EPOLLIN}}));
}

// An eventfd is writable below its maximum count, so restore can fire an
// item on it again even when it is not readable.
TEST(EpollTest, FiredOneShotOnUnreadableEventfd) {
  Fixture f;
  ASSERT_EQ(Add(f.ep.get(), f.ready.get(), EPOLLIN | EPOLLONESHOT, 5), 0);
  ASSERT_EQ(Ready(f.ep.get()).size(), 1u);
  uint64_t value = 0;
  ASSERT_EQ(read(f.ready.get(), &value, sizeof value), 8);
  SelfFds self = Snapshot();
  Result<image::File> file = DumpEpoll(self, f.ep.get());
  ASSERT_TRUE(file.ok()) << file.error().ToString();
  Result<sys::UniqueFd> restored = RestoreEpoll(self, file.value());
  ASSERT_TRUE(restored.ok()) << restored.error().ToString();
  EXPECT_EQ(Items(restored->get()), Items(f.ep.get()));
  value = 1;
  ASSERT_EQ(write(f.ready.get(), &value, sizeof value), 8);
  EXPECT_EQ(Ready(restored->get()).size(), 0u);
}

// Nothing can fire it again, so ADD leaves it armed for EPOLLERR|EPOLLHUP,
// which an epoll never reports.
TEST(EpollTest, FiredOneShotOnIdleEpoll) {
  Fixture f;
  sys::UniqueFd outer(epoll_create1(EPOLL_CLOEXEC));
  ASSERT_EQ(Add(f.ep.get(), f.ready.get(), EPOLLIN, 1), 0);
  ASSERT_EQ(Add(outer.get(), f.ep.get(), EPOLLIN | EPOLLONESHOT, 2), 0);
  ASSERT_EQ(Ready(outer.get()).size(), 1u);
  uint64_t value = 0;
  ASSERT_EQ(read(f.ready.get(), &value, sizeof value), 8);  // inner epoll idle now
  SelfFds self = Snapshot();
  Result<image::File> file = DumpEpoll(self, outer.get());
  ASSERT_TRUE(file.ok()) << file.error().ToString();
  Result<sys::UniqueFd> restored = RestoreEpoll(self, file.value());
  ASSERT_TRUE(restored.ok()) << restored.error().ToString();
  std::vector<std::string> items = Items(restored->get());
  ASSERT_EQ(items.size(), 1u);
  EXPECT_NE(items[0].find("events: 40000018"), std::string::npos) << items[0];
  value = 1;
  ASSERT_EQ(write(f.ready.get(), &value, sizeof value), 8);
  EXPECT_EQ(Ready(outer.get()).size(), 0u);
  EXPECT_EQ(Ready(restored->get()).size(), 0u);
}

TEST(EpollTest, RefusesFiredOneShotOnIdlePipe) {
  Fixture f;
  ASSERT_EQ(write(f.pw.get(), "x", 1), 1);
  ASSERT_EQ(Add(f.ep.get(), f.pr.get(), EPOLLIN | EPOLLONESHOT, 5), 0);
  ASSERT_EQ(Ready(f.ep.get()).size(), 1u);
  char c;
  ASSERT_EQ(read(f.pr.get(), &c, 1), 1);
  SelfFds self = Snapshot();
  Result<image::File> file = DumpEpoll(self, f.ep.get());
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(file.error().message().find("one-shot"), std::string::npos);
}

TEST(EpollTest, ItemsFollowTheirFileNotTheNumber) {
  Fixture f;
  int n = f.pr.get();
  ASSERT_EQ(Add(f.ep.get(), n, EPOLLIN, 0xa), 0);
  sys::UniqueFd moved(fcntl(n, F_DUPFD_CLOEXEC, 0));
  f.pr.reset();
  // Number n now holds another file, added too: two items under n.
  sys::UniqueFd reused(fcntl(f.idle.get(), F_DUPFD_CLOEXEC, n));
  ASSERT_EQ(reused.get(), n);
  ASSERT_EQ(Add(f.ep.get(), n, EPOLLIN, 0xb), 0);
  SelfFds self = Snapshot();
  Result<image::File> file = DumpEpoll(self, f.ep.get());
  ASSERT_TRUE(file.ok()) << file.error().ToString();
  image::EpollState state;
  ASSERT_TRUE(file->state().UnpackTo(&state));
  ASSERT_EQ(state.items_size(), 2);
  for (const image::EpollItem& item : state.items()) {
    EXPECT_EQ(item.tfd(), n);
    int holder = item.data() == 0xa ? moved.get() : f.idle.get();
    EXPECT_EQ(item.file_id(), self.ctx.file_of_fd.at(holder)) << item.DebugString();
  }
  Result<sys::UniqueFd> restored = RestoreEpoll(self, file.value());
  ASSERT_TRUE(restored.ok()) << restored.error().ToString();
  EXPECT_EQ(Items(restored->get()), Items(f.ep.get()));
}

TEST(EpollTest, RefusesItemNoFdHolds) {
  Fixture f;
  ASSERT_EQ(Add(f.ep.get(), f.idle.get(), EPOLLIN, 1), 0);
  SelfFds self = Snapshot();
  self.ctx.file_of_fd.erase(f.idle.get());  // as if only something else held it
  Result<image::File> file = DumpEpoll(self, f.ep.get());
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(file.error().message().find(fmt::format("pid {} fd {}", getpid(), f.ep.get())),
            std::string::npos)
      << file.error().message();
}

// The watcher comes first in the image: it creates the watched epoll, which
// adopts that fd when its own turn comes.
TEST(EpollTest, NestedEpollRestoredBeforeItsWatcher) {
  Fixture f;
  sys::UniqueFd outer(epoll_create1(EPOLL_CLOEXEC));
  ASSERT_EQ(Add(f.ep.get(), f.ready.get(), EPOLLIN, 0x11), 0);
  ASSERT_EQ(Add(outer.get(), f.ep.get(), EPOLLIN, 0x22), 0);
  SelfFds self = Snapshot();
  Result<image::File> outer_file = DumpEpoll(self, outer.get());
  Result<image::File> inner_file = DumpEpoll(self, f.ep.get());
  ASSERT_TRUE(outer_file.ok() && inner_file.ok());
  RestoreContext rctx;
  for (const auto& [id, fd] : self.fd_of_file) {
    if (id != outer_file->id() && id != inner_file->id()) rctx.local_fds[id] = fd;
  }
  Result<sys::UniqueFd> o = Restore(rctx, outer_file.value());
  ASSERT_TRUE(o.ok()) << o.error().ToString();
  ASSERT_TRUE(rctx.local_fds.contains(inner_file->id()));
  int early = rctx.local_fds[inner_file->id()];
  Result<sys::UniqueFd> i = Restore(rctx, inner_file.value());
  ASSERT_TRUE(i.ok()) << i.error().ToString();
  EXPECT_EQ(i->get(), early);
  EXPECT_EQ(Items(i->get()), Items(f.ep.get()));
  EXPECT_EQ(Ready(o->get()), (std::vector<std::pair<uint64_t, uint32_t>>{{0x22, EPOLLIN}}));
  EXPECT_EQ(Ready(i->get()), (std::vector<std::pair<uint64_t, uint32_t>>{{0x11, EPOLLIN}}));
}

TEST(EpollTest, RestoreRejectsMissingTarget) {
  Fixture f;
  ASSERT_EQ(Add(f.ep.get(), f.pr.get(), EPOLLIN, 1), 0);
  SelfFds self = Snapshot();
  Result<image::File> file = DumpEpoll(self, f.ep.get());
  ASSERT_TRUE(file.ok()) << file.error().ToString();
  RestoreContext rctx;  // the pipe was never restored
  Result<sys::UniqueFd> r = Restore(rctx, file.value());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt) << r.error().ToString();
  image::File bad;
  bad.mutable_state()->PackFrom(image::EpollItem());
  EXPECT_EQ(Restore(rctx, bad).error().code(), ErrorCode::kCorrupt);
}

TEST(EpollTest, RejectsMalformedFdinfo) {
  Fixture f;
  SelfFds self = Snapshot();
  for (const char* line :
       {"x events: 19 data: 1", "5 events: zz data: 1", "5 events: 19", "5 events 19 data: 1"}) {
    FdDumpInput in = InputFor(f.ep.get());
    in.info.extra.push_back({"tfd", line});
    image::File file;
    Status s = Dump(self.ctx, in, &file);
    ASSERT_FALSE(s.ok()) << line;
    EXPECT_EQ(s.error().code(), ErrorCode::kInvalid) << s.error().ToString();
  }
}

TEST(EpollTest, MatchesOnlyEpolls) {
  Fixture f;
  EXPECT_TRUE(Matches(InputFor(f.ep.get())));
  EXPECT_FALSE(Matches(InputFor(f.ready.get())));
  EXPECT_FALSE(Matches(InputFor(f.pr.get())));
}

}  // namespace
}  // namespace stasis::kinds::epoll
