// Round trips and refusals of the small fd kinds: signalfd, timerfd,
// inotify, fifo.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>

#include "fifo.pb.h"
#include "inotify.pb.h"
#include "kinds/fifo.h"
#include "kinds/inotify.h"
#include "kinds/kind_testing.h"
#include "kinds/signalfd.h"
#include "kinds/timerfd.h"
#include "signalfd.pb.h"
#include "sys/proc.h"
#include "timerfd.pb.h"

namespace stasis::kinds {
namespace {

using fd_testing::InputFor;

std::string FdInfoLines(int fd, const std::string& prefix) {
  std::string text = sys::proc::ReadFile(fmt::format("/proc/self/fdinfo/{}", fd)).value();
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    std::string line = text.substr(pos, eol - pos);
    if (line.starts_with(prefix)) lines.push_back(line);
    pos = eol == std::string::npos ? text.size() : eol + 1;
  }
  std::sort(lines.begin(), lines.end());
  std::string out;
  for (const std::string& l : lines) out += l + "\n";
  return out;
}

template <typename DumpFn>
Result<image::File> DumpWith(DumpFn dump, int fd, DumpContext& ctx, uint64_t id = 1) {
  image::File file;
  file.set_id(id);
  STASIS_TRY(dump(ctx, InputFor(fd), &file));
  return file;
}

TEST(Signalfd, RoundTrip) {
  uint64_t mask = (1ull << (SIGUSR1 - 1)) | (1ull << (33 - 1)) | (1ull << (64 - 1));
  sys::UniqueFd fd(
      static_cast<int>(syscall(SYS_signalfd4, -1, &mask, 8, SFD_NONBLOCK | SFD_CLOEXEC)));
  ASSERT_TRUE(fd.valid());
  ASSERT_TRUE(signalfd::Matches(InputFor(fd.get())));
  DumpContext ctx;
  Result<image::File> file = DumpWith(signalfd::Dump, fd.get(), ctx);
  ASSERT_TRUE(file.ok()) << file.error().ToString();
  image::SignalfdState state;
  ASSERT_TRUE(file->state().UnpackTo(&state));
  EXPECT_EQ(state.signal_mask(), mask);
  RestoreContext rctx;
  Result<sys::UniqueFd> r = signalfd::Restore(rctx, *file);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(FdInfoLines(r->get(), "sigmask"), FdInfoLines(fd.get(), "sigmask"));
  EXPECT_EQ(fcntl(r->get(), F_GETFL), fcntl(fd.get(), F_GETFL));
}

TEST(Timerfd, PeriodicWithUnreadTicks) {
  sys::UniqueFd fd(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  struct itimerspec its = {{0, 20'000'000}, {0, 1'000'000}};
  ASSERT_EQ(timerfd_settime(fd.get(), 0, &its, nullptr), 0);
  usleep(70'000);
  DumpContext ctx;
  Result<image::File> file = DumpWith(timerfd::Dump, fd.get(), ctx);
  ASSERT_TRUE(file.ok()) << file.error().ToString();
  image::TimerfdState state;
  ASSERT_TRUE(file->state().UnpackTo(&state));
  EXPECT_EQ(state.clockid(), CLOCK_MONOTONIC);
  EXPECT_GE(state.ticks(), 3u);  // gettime folded the missed periods in
  EXPECT_EQ(state.interval_nsec(), 20'000'000);
  EXPECT_GT(state.value_nsec(), 0);  // the next period, not 0
  RestoreContext rctx;
  Result<sys::UniqueFd> r = timerfd::Restore(rctx, *file);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  uint64_t ticks = 0;
  ASSERT_EQ(read(r->get(), &ticks, 8), 8);
  EXPECT_GE(ticks, state.ticks());
  struct itimerspec now;
  ASSERT_EQ(timerfd_gettime(r->get(), &now), 0);
  EXPECT_EQ(now.it_interval.tv_nsec, 20'000'000);
  EXPECT_EQ(fcntl(r->get(), F_GETFL), fcntl(fd.get(), F_GETFL));
}

TEST(Timerfd, AbsoluteDeadlineAndFlags) {
  sys::UniqueFd fd(timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC));
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  struct itimerspec its = {{0, 0}, {t.tv_sec + 100, 0}};
  ASSERT_EQ(timerfd_settime(fd.get(), TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &its, nullptr),
            0);
  DumpContext ctx;
  Result<image::File> file = DumpWith(timerfd::Dump, fd.get(), ctx);
  ASSERT_TRUE(file.ok()) << file.error().ToString();
  image::TimerfdState state;
  ASSERT_TRUE(file->state().UnpackTo(&state));
  EXPECT_EQ(state.settime_flags(), unsigned{TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET});
  usleep(100'000);  // an absolute deadline does not move with the time spent in the image
  RestoreContext rctx;
  Result<sys::UniqueFd> r = timerfd::Restore(rctx, *file);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  struct itimerspec left;
  ASSERT_EQ(timerfd_gettime(r->get(), &left), 0);
  clock_gettime(CLOCK_REALTIME, &t);
  double end = static_cast<double>(t.tv_sec + left.it_value.tv_sec) +
               static_cast<double>(t.tv_nsec + left.it_value.tv_nsec) / 1e9;
  EXPECT_NEAR(end, static_cast<double>(its.it_value.tv_sec), 0.02);
  EXPECT_EQ(FdInfoLines(r->get(), "settime flags"), "settime flags: 03\n");
}

TEST(Inotify, ParseWatchLine) {
  Result<inotify::WatchLine> w = inotify::ParseWatchLine(
      "wd:1a ino:a72088 sdev:fe00000 mask:4000002 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 "
      "f_handle:8820a70012558d44");
  ASSERT_TRUE(w.ok()) << w.error().ToString();
  EXPECT_EQ(w->wd, 0x1a);
  EXPECT_EQ(w->ino, 0xa72088u);
  EXPECT_EQ(w->sdev, 0xfe00000u);
  EXPECT_EQ(w->mask, 0x4000002u);
  EXPECT_TRUE(w->has_handle);
  EXPECT_EQ(w->handle_type, 1);
  EXPECT_EQ(w->handle, std::string("\x88\x20\xa7\x00\x12\x55\x8d\x44", 8));
  // No handle (a filesystem without export operations).
  w = inotify::ParseWatchLine("wd:3 ino:1 sdev:5 mask:2 ignored_mask:0");
  ASSERT_TRUE(w.ok()) << w.error().ToString();
  EXPECT_FALSE(w->has_handle);
  EXPECT_FALSE(inotify::ParseWatchLine("wd:3 ino:1 mask:2").ok());
  EXPECT_FALSE(
      inotify::ParseWatchLine("wd:3 ino:1 sdev:5 mask:2 fhandle-bytes:4 f_handle:00").ok());
  EXPECT_FALSE(inotify::ParseWatchLine("wd:zz ino:1 sdev:5 mask:2").ok());
}

class InotifyDir : public testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/stasis-inotify-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    for (int i = 0; i < 14; ++i) {
      sys::UniqueFd f(open(Path(i).c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
      ASSERT_TRUE(f.valid());
    }
  }
  void TearDown() override {
    for (int i = 0; i < 14; ++i) unlink(Path(i).c_str());
    rmdir(dir_.c_str());
  }
  std::string Path(int i) { return fmt::format("{}/f{}", dir_, i); }
  std::string dir_;
};

// Watches with gaps in their wds, some above 9 (fdinfo prints wds in hex).
TEST_F(InotifyDir, RoundTripKeepsWds) {
  sys::UniqueFd fd(inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  std::vector<int> keep;
  for (int i = 0; i < 14; ++i) {
    int wd = inotify_add_watch(fd.get(), Path(i).c_str(), IN_MODIFY | (i % 3 ? 0 : IN_ONESHOT));
    ASSERT_EQ(wd, i + 1);
    if (i % 4 == 1 || i == 13) {
      keep.push_back(wd);
    } else {
      ASSERT_EQ(inotify_rm_watch(fd.get(), wd), 0);
    }
  }
  char buf[4096];
  while (read(fd.get(), buf, sizeof buf) > 0) {
  }
  DumpContext ctx;
  Result<image::File> file = DumpWith(inotify::Dump, fd.get(), ctx);
  ASSERT_TRUE(file.ok()) << file.error().ToString();
  image::InotifyState state;
  ASSERT_TRUE(file->state().UnpackTo(&state));
  ASSERT_EQ(state.watches_size(), static_cast<int>(keep.size()));
  EXPECT_EQ(state.watches(0).path(), Path(1));
  RestoreContext rctx;
  Result<sys::UniqueFd> r = inotify::Restore(rctx, *file);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(FdInfoLines(r->get(), "inotify"), FdInfoLines(fd.get(), "inotify"));
  int queued = -1;
  ASSERT_EQ(ioctl(r->get(), FIONREAD, &queued), 0);
  EXPECT_EQ(queued, 0);  // the scratch watches' IN_IGNORED were read away
  EXPECT_EQ(fcntl(r->get(), F_GETFL), fcntl(fd.get(), F_GETFL));
}

TEST_F(InotifyDir, RefusesQueuedEvents) {
  sys::UniqueFd fd(inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  ASSERT_EQ(inotify_add_watch(fd.get(), dir_.c_str(), IN_ATTRIB), 1);
  ASSERT_EQ(chmod(dir_.c_str(), 0700), 0);
  DumpContext ctx;
  Result<image::File> file = DumpWith(inotify::Dump, fd.get(), ctx);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(file.error().message().find("unread"), std::string::npos) << file.error().message();
}

class Fifo : public testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/stasis-fifo-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/f";
    ASSERT_EQ(mkfifo(path_.c_str(), 0600), 0);
  }
  void TearDown() override {
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }
  std::string dir_, path_;
};

TEST_F(Fifo, BothEndsAndDataOnce) {
  sys::UniqueFd r(open(path_.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  sys::UniqueFd w(open(path_.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_EQ(write(w.get(), "hello", 5), 5);
  DumpContext ctx;
  Result<image::File> fr = DumpWith(fifo::Dump, r.get(), ctx, 1);
  ASSERT_TRUE(fr.ok()) << fr.error().ToString();
  Result<image::File> fw = DumpWith(fifo::Dump, w.get(), ctx, 2);
  ASSERT_TRUE(fw.ok()) << fw.error().ToString();
  image::FifoState sr, sw;
  ASSERT_TRUE(fr->state().UnpackTo(&sr) && fw->state().UnpackTo(&sw));
  EXPECT_EQ(sr.data(), "hello");
  EXPECT_EQ(sw.same_fifo_as(), 1u);
  EXPECT_TRUE(sw.data().empty());
  char buf[8];
  ASSERT_EQ(read(r.get(), buf, sizeof buf), 5);  // the dump left the bytes in place
  r.reset();
  w.reset();

  sys::UniqueFd nr, nw;
  {
    RestoreContext rctx;
    Result<sys::UniqueFd> a = fifo::Restore(rctx, *fr);
    ASSERT_TRUE(a.ok()) << a.error().ToString();
    rctx.local_fds[1] = a->get();
    Result<sys::UniqueFd> b = fifo::Restore(rctx, *fw);
    ASSERT_TRUE(b.ok()) << b.error().ToString();
    nr = std::move(*a);
    nw = std::move(*b);
  }
  EXPECT_EQ(fcntl(nr.get(), F_GETFL) & (O_ACCMODE | O_NONBLOCK), O_RDONLY | O_NONBLOCK);
  EXPECT_EQ(fcntl(nw.get(), F_GETFL) & (O_ACCMODE | O_NONBLOCK), O_WRONLY);
  ASSERT_EQ(read(nr.get(), buf, sizeof buf), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  EXPECT_EQ(read(nr.get(), buf, sizeof buf), -1);  // once, and a writer remains
  EXPECT_EQ(errno, EAGAIN);
  ASSERT_EQ(write(nw.get(), "x", 1), 1);
  EXPECT_EQ(read(nr.get(), buf, sizeof buf), 1);
}

TEST_F(Fifo, RestoreRefusesAFifoThatHoldsData) {
  sys::UniqueFd rw(open(path_.c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_EQ(write(rw.get(), "abc", 3), 3);
  DumpContext ctx;
  Result<image::File> f = DumpWith(fifo::Dump, rw.get(), ctx);
  ASSERT_TRUE(f.ok()) << f.error().ToString();
  RestoreContext rctx;  // rw still holds the FIFO and its bytes
  Result<sys::UniqueFd> r = fifo::Restore(rctx, *f);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("already holds 3 unread bytes"), std::string::npos)
      << r.error().message();
}

}  // namespace
}  // namespace stasis::kinds
