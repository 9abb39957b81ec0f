#include "kinds/pty.h"
#include "kinds/kind_testing.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

#include "kinds/pty_internal.h"
#include "sys/proc.h"

namespace stasis::kinds::pty {
namespace {

KernelTermios Canonical() {
  KernelTermios t;
  t.lflag = ICANON | ECHO | ECHOE | ISIG | IEXTEN;
  t.iflag = ICRNL;
  t.oflag = OPOST | ONLCR;
  t.cc[VEOF] = 0x04;
  t.cc[VERASE] = 0x7f;
  t.cc[VKILL] = 0x15;
  t.cc[VINTR] = 0x03;
  t.cc[VLNEXT] = 0x16;
  t.cc[VSTART] = 0x11;
  t.cc[VSTOP] = 0x13;
  return t;
}

image::PtyInputLine Line(std::string data, bool eof) {
  image::PtyInputLine line;
  line.set_data(std::move(data));
  line.set_eof(eof);
  return line;
}

TEST(PtyPure, TtyIndexFromFdinfo) {
  Result<sys::proc::FdInfo> info =
      sys::proc::ParseFdInfo("pos:\t0\nflags:\t0100002\nmnt_id:\t25\nino:\t4\ntty-index:\t7\n");
  ASSERT_TRUE(info.ok()) << info.error().ToString();
  EXPECT_EQ(TtyIndex(info.value()), 7u);
  info = sys::proc::ParseFdInfo("pos:\t0\nflags:\t0100002\nmnt_id:\t25\n");
  ASSERT_TRUE(info.ok());
  EXPECT_FALSE(TtyIndex(info.value()));
  info = sys::proc::ParseFdInfo("pos:\t0\nflags:\t02\ntty-index:\t7x\n");
  ASSERT_TRUE(info.ok());
  EXPECT_FALSE(TtyIndex(info.value()));
}

TEST(PtyPure, DeviceNumbers) {
  EXPECT_TRUE(IsMasterRdev(makedev(5, 2)));
  EXPECT_FALSE(IsMasterRdev(makedev(5, 0)));  // /dev/tty
  EXPECT_TRUE(IsSlaveRdev(makedev(136, 0)));
  EXPECT_TRUE(IsSlaveRdev(makedev(143, 255)));
  EXPECT_FALSE(IsSlaveRdev(makedev(144, 0)));
  EXPECT_FALSE(IsSlaveRdev(makedev(4, 1)));  // a virtual console
  EXPECT_EQ(SlaveIndex(makedev(136, 3)), 3u);
  EXPECT_EQ(SlaveIndex(makedev(137, 5)), 261u);
}

TEST(PtyPure, JobRecordsDoNotMixPairs) {
  image::PtyJob a, b;
  a.set_session(42);
  a.set_foreground_pgrp(43);
  b.set_session(7);
  std::set<std::string> records = {JobRecord(26, 5, a), JobRecord(26, 50, b), "pipe:5"};
  std::optional<image::PtyJob> got = FindJobRecord(records, 26, 5);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->session(), 42);
  EXPECT_EQ(got->foreground_pgrp(), 43);
  got = FindJobRecord(records, 26, 50);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->session(), 7);
  EXPECT_EQ(got->foreground_pgrp(), 0);
  EXPECT_FALSE(FindJobRecord(records, 26, 6));
  EXPECT_FALSE(FindJobRecord(records, 2, 5));
}

TEST(PtyPure, TermiosRoundTripAndRejection) {
  KernelTermios t = Canonical();
  t.cflag = 0x10bd;
  t.ispeed = 12345;
  t.ospeed = 9600;
  t.line = 0;
  image::Termios proto = ToProto(t);
  Result<KernelTermios> back = FromProto(proto);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(memcmp(&back.value(), &t, sizeof t), 0);
  proto.set_cc("short");
  back = FromProto(proto);
  ASSERT_FALSE(back.ok());
  EXPECT_EQ(back.error().code(), ErrorCode::kCorrupt);
}

TEST(PtyPure, LineEnds) {
  KernelTermios t = Canonical();
  EXPECT_TRUE(EndsWithEol(t, "ls\n"));
  EXPECT_FALSE(EndsWithEol(t, "ls"));                    // ended by VEOF
  EXPECT_FALSE(EndsWithEol(t, ""));                      // VEOF at the start of a line
  EXPECT_FALSE(EndsWithEol(t, std::string("ls\0", 3)));  // VEOL 0 is off
  t.cc[VEOL] = '!';
  EXPECT_TRUE(EndsWithEol(t, "hi!"));
  t.cc[VEOL2] = '#';
  EXPECT_TRUE(EndsWithEol(t, "hi#"));
  t.lflag &= ~IEXTEN;  // VEOL2 needs IEXTEN
  EXPECT_FALSE(EndsWithEol(t, "hi#"));
}

TEST(PtyPure, FeedPlanTurnsProcessingOff) {
  KernelTermios t = Canonical(), w;
  std::string feed;
  image::PtyInputLine line = Line("ls -l\n", false);
  ASSERT_TRUE(FeedPlan(t, &line, {}, &w, &feed).ok());
  EXPECT_EQ(feed, "ls -l\n");
  EXPECT_TRUE(w.lflag & ICANON);
  EXPECT_FALSE(w.lflag & (ECHO | ISIG));
  EXPECT_FALSE(w.iflag & ICRNL);
  EXPECT_FALSE(w.oflag & OPOST);
  EXPECT_FALSE(w.iflag & IXON);
  EXPECT_EQ(w.cc[VERASE], 0);
  EXPECT_EQ(w.cc[VKILL], 0);
  EXPECT_EQ(w.cc[VINTR], 0);
  EXPECT_EQ(w.cc[VEOF], 0);
  EXPECT_EQ(w.cc[VLNEXT], 0x16);
}

TEST(PtyPure, FeedPlanEscapesWhatWouldEndALine) {
  KernelTermios t = Canonical(), w;
  std::string feed;
  // A newline typed after ^V, inside a line.
  image::PtyInputLine line = Line("a\nb\n", false);
  ASSERT_TRUE(FeedPlan(t, &line, {}, &w, &feed).ok());
  EXPECT_EQ(feed, "a\x16\nb\n");
  // Ended by VEOF (not in the data); a ^D and a ^V inside it.
  line = Line("x\x04y\x16", true);
  ASSERT_TRUE(FeedPlan(t, &line, {}, &w, &feed).ok());
  EXPECT_EQ(w.cc[VEOF], 0x04);
  EXPECT_EQ(feed, "x\x16\x04y\x16\x16\x04");
  // Ended by VEOL.
  t.cc[VEOL] = '!';
  line = Line("a!b!", false);
  ASSERT_TRUE(FeedPlan(t, &line, {}, &w, &feed).ok());
  EXPECT_EQ(w.cc[VEOL], '!');
  EXPECT_EQ(feed, "a\x16!b!");
  // The unfinished line: nothing ends it.
  ASSERT_TRUE(FeedPlan(t, nullptr, "par\x7f", &w, &feed).ok());
  EXPECT_EQ(feed, "par\x7f");
  EXPECT_EQ(w.cc[VEOL], 0);
}

TEST(PtyPure, FeedPlanPicksFreeControlCharacters) {
  KernelTermios t = Canonical(), w;
  std::string feed;
  t.cc[VEOL] = 0x16;  // ^V ends lines here: escape with something else
  image::PtyInputLine line = Line("a\x16", false);
  ASSERT_TRUE(FeedPlan(t, &line, {}, &w, &feed).ok());
  EXPECT_EQ(w.cc[VEOL], 0x16);
  EXPECT_NE(w.cc[VLNEXT], 0x16);
  EXPECT_EQ(feed, "a\x16");
}

TEST(PtyPure, FeedPlanWithIxonKept) {
  KernelTermios t = Canonical(), w;
  t.iflag |= IXON;
  std::string feed;
  // Canonical: escaped, so the line discipline stores them.
  ASSERT_TRUE(FeedPlan(t, nullptr, "a\x13", &w, &feed).ok());
  EXPECT_TRUE(w.iflag & IXON);
  EXPECT_EQ(feed, "a\x16\x13");
  // Non-canonical: nothing escapes a flow-control character.
  t.lflag &= ~ICANON;
  Status s = FeedPlan(t, nullptr, "a\x13", &w, &feed);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kUnsupported);
  t.iflag &= ~IXON;
  ASSERT_TRUE(FeedPlan(t, nullptr, "a\x13", &w, &feed).ok());
  EXPECT_EQ(feed, "a\x13");
}

TEST(PtyPure, FeedPlanRejectsImpossibleImages) {
  KernelTermios t = Canonical(), w;
  std::string feed;
  image::PtyInputLine line = Line("", false);
  EXPECT_EQ(FeedPlan(t, &line, {}, &w, &feed).error().code(), ErrorCode::kCorrupt);
  t.lflag &= ~ICANON;
  line = Line("a\n", false);
  EXPECT_EQ(FeedPlan(t, &line, {}, &w, &feed).error().code(), ErrorCode::kCorrupt);
}

// --- on real pairs (TIOCSTI needs CAP_SYS_ADMIN) -----------------------------

struct Pair {
  sys::UniqueFd master, slave;
};

Pair NewPair(const KernelTermios* t) {
  Pair p;
  p.master.reset(posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
  EXPECT_TRUE(p.master.valid());
  EXPECT_EQ(unlockpt(p.master.get()), 0);
  p.slave.reset(ioctl(p.master.get(), TIOCGPTPEER, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
  EXPECT_TRUE(p.slave.valid());
  if (t) {
    EXPECT_EQ(ioctl(p.slave.get(), kTcsets2, t), 0);
  }
  return p;
}

bool CanInject() {
  Pair p = NewPair(nullptr);
  char c = 'x';
  return ioctl(p.slave.get(), TIOCSTI, &c) == 0;
}

// Until FIONREAD on fd says want (the line discipline works asynchronously).
void WaitQueue(int fd, int want) {
  for (int i = 0; i < 300; ++i) {
    int n = -1;
    ioctl(fd, FIONREAD, &n);
    if (n == want) return;
    usleep(10000);
  }
  ADD_FAILURE() << "queue never reached " << want << " bytes";
}

// Every read() of fd until EAGAIN (or a 0-byte read when `stop_at_zero`).
std::vector<std::string> Reads(int fd, bool stop_at_zero) {
  std::vector<std::string> out;
  char buf[8192];
  for (int i = 0; i < 100; ++i) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 || (n == 0 && stop_at_zero)) break;
    out.emplace_back(buf, static_cast<size_t>(n));
  }
  return out;
}

// Lines, then the unfinished line (switching ICANON off), then the output.
std::vector<std::string> Contents(Pair& p, const KernelTermios& t) {
  std::vector<std::string> out = Reads(p.slave.get(), false);
  KernelTermios raw = t;
  raw.lflag &= ~ICANON;
  EXPECT_EQ(ioctl(p.slave.get(), kTcsets2, &raw), 0);
  std::vector<std::string> tail = Reads(p.slave.get(), true);
  out.push_back("tail:" + (tail.empty() ? "" : tail[0]));
  int fl = fcntl(p.master.get(), F_GETFL);
  fcntl(p.master.get(), F_SETFL, fl | O_NONBLOCK);
  std::vector<std::string> output = Reads(p.master.get(), true);
  std::string all;
  for (const std::string& s : output) all += s;
  out.push_back("output:" + all);
  return out;
}

TEST(PtyQueues, CanonicalDrainKeepsEverythingAndFeedsANewPair) {
  if (!CanInject()) GTEST_SKIP() << "TIOCSTI needs CAP_SYS_ADMIN";
  KernelTermios t = Canonical();
  t.cc[VEOL] = '!';
  Pair p = NewPair(&t);
  ASSERT_EQ(ioctl(p.slave.get(), kTcgets2, &t), 0);  // as the pty driver keeps it (CS8, CREAD)
  ASSERT_EQ(write(p.slave.get(), "out\n", 4), 4);
  // "a^V\nb\n" holds an escaped newline; "x^D" ends by VEOF; "^D" alone is
  // an empty line; "hi!" ends by VEOL; "parx^?" is unfinished, x erased.
  const char typed[] = "a\x16\nb\nx\x04\x04hi!parx\x7f";
  ASSERT_EQ(write(p.master.get(), typed, sizeof typed - 1), static_cast<ssize_t>(sizeof typed - 1));
  usleep(200000);  // for the line discipline to take it all in
  Result<Queues> q = DrainQueues(p.master.get(), p.slave.get(), t, false, "test");
  ASSERT_TRUE(q.ok()) << q.error().ToString();
  ASSERT_EQ(q->lines.size(), 4u);
  EXPECT_EQ(q->lines[0].data(), "a\nb\n");
  EXPECT_FALSE(q->lines[0].eof());
  EXPECT_EQ(q->lines[1].data(), "x");
  EXPECT_TRUE(q->lines[1].eof());
  EXPECT_EQ(q->lines[2].data(), "");
  EXPECT_TRUE(q->lines[2].eof());
  EXPECT_EQ(q->lines[3].data(), "hi!");
  EXPECT_FALSE(q->lines[3].eof());
  EXPECT_EQ(q->tail, "par");
  EXPECT_TRUE(q->output.starts_with("out\r\n")) << q->output;

  // Put back in the original: the same reads, line by line.
  KernelTermios now;
  ASSERT_EQ(ioctl(p.slave.get(), kTcgets2, &now), 0);
  EXPECT_EQ(memcmp(&now, &t, sizeof t), 0);
  std::vector<std::string> want = {"a\nb\n", "x", "", "hi!", "tail:par", "output:" + q->output};
  EXPECT_EQ(Contents(p, t), want);

  // Fed into a new pair.
  Pair fresh = NewPair(nullptr);
  Status fed = FeedQueues(fresh.slave.get(), t, q.value(), "test");
  ASSERT_TRUE(fed.ok()) << fed.error().ToString();
  WaitQueue(fresh.master.get(), static_cast<int>(q->output.size()));
  ASSERT_EQ(ioctl(fresh.slave.get(), kTcgets2, &now), 0);
  EXPECT_EQ(memcmp(&now, &t, sizeof t), 0);
  EXPECT_EQ(Contents(fresh, t), want);
}

TEST(PtyQueues, RawDrainAndPacketMode) {
  if (!CanInject()) GTEST_SKIP() << "TIOCSTI needs CAP_SYS_ADMIN";
  KernelTermios t;
  t.cflag = CS8 | CREAD;
  t.cc[VMIN] = 1;
  Pair p = NewPair(&t);
  int one = 1;
  ASSERT_EQ(ioctl(p.master.get(), TIOCPKT, &one), 0);
  std::string in("\x03\x13raw\0in", 8);
  ASSERT_EQ(write(p.master.get(), in.data(), in.size()), 8);
  ASSERT_EQ(write(p.slave.get(), "bout", 4), 4);
  WaitQueue(p.slave.get(), 8);
  WaitQueue(p.master.get(), 4);
  Result<Queues> q = DrainQueues(p.master.get(), p.slave.get(), t, true, "test");
  ASSERT_TRUE(q.ok()) << q.error().ToString();
  EXPECT_TRUE(q->lines.empty());
  EXPECT_EQ(q->tail, in);
  EXPECT_EQ(q->output, "bout");
  // Back in place, and no status byte appeared for the packet-mode reader.
  pollfd pri = {p.master.get(), POLLPRI, 0};
  EXPECT_EQ(poll(&pri, 1, 0), 0);
  char buf[64];
  EXPECT_EQ(read(p.slave.get(), buf, sizeof buf), 8);
  EXPECT_EQ(std::string(buf, 8), in);
  ASSERT_EQ(read(p.master.get(), buf, sizeof buf), 5);
  EXPECT_EQ(std::string(buf, 5), std::string("\0bout", 5));
}

// --- the kind, on a pair this process holds -----------------------------------

using fd_testing::InputFor;

TEST(PtyKind, DumpAndRestoreAPair) {
  if (!CanInject()) GTEST_SKIP() << "TIOCSTI needs CAP_SYS_ADMIN";
  KernelTermios t = Canonical();
  t.ospeed = t.ispeed = 9600;
  t.cflag = B9600 | CS8 | CREAD;
  Pair p = NewPair(&t);
  sys::UniqueFd slave(open(ptsname(p.master.get()), O_RDWR | O_NOCTTY | O_CLOEXEC));
  ASSERT_TRUE(slave.valid());
  p.slave.reset();  // the kind opens its own
  winsize ws = {24, 132, 0, 0};
  ASSERT_EQ(ioctl(p.master.get(), TIOCSWINSZ, &ws), 0);
  ASSERT_EQ(write(p.master.get(), "ls\npw", 5), 5);
  WaitQueue(p.master.get(), 6);  // the echo "ls\r\npw"
  ASSERT_EQ(fcntl(p.master.get(), F_SETFL, O_NONBLOCK), 0);

  FdDumpInput master_in = InputFor(p.master.get()), slave_in = InputFor(slave.get());
  EXPECT_TRUE(Matches(master_in));
  EXPECT_TRUE(Matches(slave_in));
  DumpContext dctx;
  for (FdDumpInput* in : {&master_in, &slave_in}) {
    dctx.fd_index.push_back({in->pid, in->fd, in->link, in->info.flags});
  }
  image::File master_file, slave_file;
  master_file.set_id(1);
  slave_file.set_id(2);
  Status dumped = Dump(dctx, master_in, &master_file);
  ASSERT_TRUE(dumped.ok()) << dumped.error().ToString();
  dumped = Dump(dctx, slave_in, &slave_file);
  ASSERT_TRUE(dumped.ok()) << dumped.error().ToString();

  RestoreContext rctx;
  Result<sys::UniqueFd> m = Restore(rctx, master_file);
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  rctx.local_fds[1] = m->get();
  Result<sys::UniqueFd> s = Restore(rctx, slave_file);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  unsigned index = 0;
  struct stat st;
  ASSERT_EQ(ioctl(m->get(), TIOCGPTN, &index), 0);
  ASSERT_EQ(fstat(s->get(), &st), 0);
  EXPECT_EQ(SlaveIndex(st.st_rdev), index) << "the slave is not the new master's";
  KernelTermios now;
  ASSERT_EQ(ioctl(s->get(), kTcgets2, &now), 0);
  EXPECT_EQ(memcmp(&now, &t, sizeof t), 0);
  winsize ws2 = {};
  ASSERT_EQ(ioctl(m->get(), TIOCGWINSZ, &ws2), 0);
  EXPECT_EQ(ws2.ws_row, 24);
  EXPECT_EQ(ws2.ws_col, 132);
  EXPECT_EQ(fcntl(m->get(), F_GETFL) & (O_ACCMODE | O_NONBLOCK), O_RDWR | O_NONBLOCK);
  char buf[64];
  ssize_t n = read(m->get(), buf, sizeof buf);
  EXPECT_EQ(std::string(buf, n > 0 ? n : 0), "ls\r\npw");
  ASSERT_EQ(fcntl(s->get(), F_SETFL, O_NONBLOCK), 0);
  n = read(s->get(), buf, sizeof buf);
  EXPECT_EQ(std::string(buf, n > 0 ? n : 0), "ls\n");
  EXPECT_EQ(read(s->get(), buf, sizeof buf), -1);  // "pw" is unfinished
  // The original pair still holds everything.
  n = read(p.master.get(), buf, sizeof buf);
  EXPECT_EQ(std::string(buf, n > 0 ? n : 0), "ls\r\npw");
}

TEST(PtyKind, MasterWhoseSlaveIsClosed) {
  if (!CanInject()) GTEST_SKIP() << "TIOCSTI needs CAP_SYS_ADMIN";
  Pair p = NewPair(nullptr);
  ASSERT_EQ(write(p.slave.get(), "bye", 3), 3);
  p.slave.reset();
  WaitQueue(p.master.get(), 3);
  FdDumpInput in = InputFor(p.master.get());
  DumpContext dctx;
  dctx.fd_index.push_back({in.pid, in.fd, in.link, in.info.flags});
  image::File file;
  file.set_id(1);
  Status dumped = Dump(dctx, in, &file);
  ASSERT_TRUE(dumped.ok()) << dumped.error().ToString();
  image::PtyMasterState state;
  ASSERT_TRUE(file.state().UnpackTo(&state));
  EXPECT_TRUE(state.slave_closed());
  EXPECT_EQ(state.output(), "bye");
  // Our look at the slave left the original hung up as it was.
  pollfd hup = {p.master.get(), POLLIN, 0};
  ASSERT_EQ(poll(&hup, 1, 0), 1);
  EXPECT_TRUE(hup.revents & POLLHUP);

  RestoreContext rctx;
  Result<sys::UniqueFd> m = Restore(rctx, file);
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  rctx.keep_alive.clear();
  WaitQueue(m->get(), 3);
  char buf[16];
  EXPECT_EQ(read(m->get(), buf, sizeof buf), 3);
  EXPECT_EQ(read(m->get(), buf, sizeof buf), -1);
  EXPECT_EQ(errno, EIO);
}

TEST(PtyKind, RefusesAMasterWhoseSlaveIsOpenOutside) {
  Pair p = NewPair(nullptr);  // the slave is ours, but not in the dumped "tree"
  FdDumpInput in = InputFor(p.master.get());
  DumpContext ctx;
  ctx.fd_index.push_back({in.pid, in.fd, in.link, in.info.flags});
  image::File file;
  Status s = Dump(ctx, in, &file);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(s.error().message().find("outside the dumped tree"), std::string::npos)
      << s.error().message();
}

TEST(PtyKind, RefusesASlaveWhoseMasterIsOutside) {
  Pair p = NewPair(nullptr);
  FdDumpInput in = InputFor(p.slave.get());
  DumpContext ctx;
  ctx.fd_index.push_back({in.pid, in.fd, in.link, in.info.flags});
  image::File file;
  Status s = Dump(ctx, in, &file);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(s.error().message().find(fmt::format("fd {}", in.fd)), std::string::npos);
  EXPECT_NE(s.error().message().find("master is outside"), std::string::npos)
      << s.error().message();
}

TEST(PtyKind, RefusesOtherCharacterDevicesAndSignalIo) {
  FdDumpInput in;
  in.st.st_mode = S_IFCHR;
  in.st.st_rdev = makedev(1, 3);  // /dev/null
  EXPECT_FALSE(Matches(in));
  // Terminals always outside a tree: the external terminal of a shell job.
  in.st.st_rdev = makedev(5, 0);  // /dev/tty
  EXPECT_TRUE(Matches(in));
  in.st.st_rdev = makedev(4, 1);  // /dev/tty1
  EXPECT_TRUE(Matches(in));
  Pair p = NewPair(nullptr);
  ASSERT_EQ(fcntl(p.master.get(), F_SETFL, O_ASYNC), 0);
  FdDumpInput master = InputFor(p.master.get());
  DumpContext ctx;
  image::File file;
  Status s = Dump(ctx, master, &file);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("O_ASYNC"), std::string::npos) << s.error().message();
}

// A slave whose master no fd of the tree holds: refused, naming
// --shell-job, unless the dump has it; then the external terminal.
TEST(PtyKind, SlaveWithItsMasterOutsideIsTheShellJobsTerminal) {
  Pair p = NewPair(nullptr);
  FdDumpInput slave = InputFor(p.slave.get());
  ASSERT_TRUE(Matches(slave));
  DumpContext ctx;
  ctx.fd_index.push_back({slave.pid, slave.fd, slave.link, slave.info.flags});
  image::File file;
  Status s = Dump(ctx, slave, &file);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("--shell-job"), std::string::npos) << s.error().message();
  ctx.policy.shell_job = true;
  s = Dump(ctx, slave, &file);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  image::ExternalTtyState state;
  ASSERT_TRUE(file.state().UnpackTo(&state));
  EXPECT_EQ(state.path(), slave.link);
  EXPECT_FALSE(state.dev_tty());
  // Restore without --shell-job refuses; with it, stdin must be a terminal.
  RestoreContext rctx;
  Result<sys::UniqueFd> r = Restore(rctx, file);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("--shell-job"), std::string::npos);
  // A second, different terminal outside the tree is refused.
  Pair q = NewPair(nullptr);
  FdDumpInput other = InputFor(q.slave.get());
  ctx.fd_index.push_back({other.pid, other.fd, other.link, other.info.flags});
  s = Dump(ctx, other, &file);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("second terminal"), std::string::npos) << s.error().message();
}

}  // namespace
}  // namespace stasis::kinds::pty
