#include "kinds/pty.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include <map>
#include <utility>

#include "kinds/pty_internal.h"

namespace stasis::kinds::pty {
namespace {

// Masters restored so far, by their pair's devpts (dev, slave ino) at dump
// time: the File id of the master, whose slaves open their end through it.
struct RestoreState {
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> masters;
};

// Status flags a tty description keeps (the kernel's O_LARGEFILE, which
// glibc defines as 0 on x86_64, comes with every 64-bit open); the rest is
// refused rather than silently dropped.
constexpr uint32_t kKernelLargefile = 0100000;
constexpr uint32_t kCarriedFlags = O_ACCMODE | kKernelLargefile | O_NONBLOCK | O_APPEND | O_CLOEXEC;
constexpr uint32_t kSettableFlags = O_NONBLOCK | O_APPEND;
// How many spare masters the restore holds to reach the dumped index.
constexpr int kMaxIndexTries = 64;

Status CheckFlags(const FdDumpInput& in, const std::string& what) {
  uint32_t extra = in.info.flags & ~kCarriedFlags;
  if (extra & O_ASYNC) {
    return Error::Unsupported(what + ": O_ASYNC (SIGIO) on a terminal is not supported");
  }
  if (extra != 0) {
    return Error::Unsupported(fmt::format("{}: status flags {:#o} on a terminal", what, extra));
  }
  return Ok();
}

Status CheckLdisc(int fd, const std::string& what) {
  int ldisc = -1;
  if (ioctl(fd, TIOCGETD, &ldisc) < 0) return Error::Errno(what + ": TIOCGETD");
  if (ldisc != N_TTY) {
    return Error::Unsupported(fmt::format("{}: line discipline {} (only N_TTY)", what, ldisc));
  }
  return Ok();
}

Result<int> IntIoctl(int fd, unsigned long request, const std::string& what, const char* name) {
  int value = 0;
  if (ioctl(fd, request, &value) < 0) return Error::Errno(fmt::format("{}: {}", what, name));
  return value;
}

// A locked pair is unlocked while the dump opens its slave, and locked again
// on every path.
class Unlocked {
 public:
  Unlocked(int master, bool locked) : master_(master), locked_(locked) {}
  Unlocked(const Unlocked&) = delete;
  Unlocked& operator=(const Unlocked&) = delete;
  ~Unlocked() {
    int one = 1;
    if (locked_) (void)ioctl(master_, TIOCSPTLCK, &one);
  }
  Status Unlock(const std::string& what) {
    int zero = 0;
    if (locked_ && ioctl(master_, TIOCSPTLCK, &zero) < 0) return Error::Errno(what + ": unlock");
    return Ok();
  }

 private:
  int master_;
  bool locked_;
};

Status CheckLockedTermios(int master, const std::string& what) {
  KernelTermios locked;  // TIOCGLCKTRMIOS fills a struct termios: its first 36 bytes
  if (ioctl(master, TIOCGLCKTRMIOS, &locked) < 0) return Error::Errno(what + ": TIOCGLCKTRMIOS");
  bool any = locked.iflag || locked.oflag || locked.cflag || locked.lflag;
  for (uint8_t c : locked.cc) any |= c != 0;
  if (any) return Error::Unsupported(what + ": locked termios (TIOCSLCKTRMIOS)");
  return Ok();
}

// TIOCSTI, which feeds the input queue back, on a terminal that is not our
// controlling one.
Status CheckCanFeed(const std::string& what) {
  constexpr int kCapSysAdmin = 21;
  std::string text = STASIS_TRY(sys::proc::ReadFile("/proc/self/status"));
  if (!(STASIS_TRY(sys::proc::ParseStatus(text)).cap_eff & (uint64_t{1} << kCapSysAdmin))) {
    return Error::Unsupported(what + ": carrying a terminal's unread input needs CAP_SYS_ADMIN");
  }
  return Ok();
}

// The queues, after the checks that they can be read and put back.
Result<Queues> DumpQueues(int master, int slave, const KernelTermios& t, bool packet,
                          const std::string& what) {
  pollfd p[2] = {{master, POLLPRI, 0}, {slave, POLLOUT, 0}};
  if (poll(p, 2, 0) < 0) return Error::Errno(what + ": poll");
  if (packet && (p[0].revents & POLLPRI)) {
    return Error::Unsupported(what + ": a packet-mode status byte is waiting for the master");
  }
  int out = STASIS_TRY(IntIoctl(master, FIONREAD, what, "FIONREAD"));
  int in = STASIS_TRY(IntIoctl(slave, FIONREAD, what, "FIONREAD"));
  if (!(p[1].revents & POLLOUT) || static_cast<size_t>(out) >= kTtyBufSize - 1) {
    return Error::Unsupported(what + ": its output is stopped (^S, tcflow) or its queue is full");
  }
  // A full queue may have more waiting in the flip buffers, which the
  // line discipline could not take back.
  if (static_cast<size_t>(in) >= kTtyBufSize - 1) {
    return Error::Unsupported(what + ": its input queue is full");
  }
  if (t.lflag & EXTPROC) {
    if (out != 0 || in != 0) {
      return Error::Unsupported(what + ": unread data on a terminal in EXTPROC mode");
    }
    return Queues{};
  }
  STASIS_TRY(CheckCanFeed(what));
  return DrainQueues(master, slave, t, packet, what);
}

Status DumpMaster(DumpContext& ctx, const FdDumpInput& in, image::File* file) {
  int m = in.local.get();
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  unsigned index = 0;
  if (ioctl(m, TIOCGPTN, &index) < 0) return Error::Errno(what + ": TIOCGPTN");
  what = fmt::format("{}, master of /dev/pts/{}", what, index);
  STASIS_TRY(CheckFlags(in, what));
  STASIS_TRY(CheckLdisc(m, what));
  // Before our own slave open below hides it: POLLHUP says no slave is open.
  pollfd p = {m, POLLIN, 0};
  if (poll(&p, 1, 0) < 0) return Error::Errno(what + ": poll");
  bool no_slave_open = p.revents & POLLHUP;

  image::PtyMasterState state;
  state.set_locked(STASIS_TRY(IntIoctl(m, TIOCGPTLCK, what, "TIOCGPTLCK")) != 0);
  Unlocked unlocked(m, state.locked());
  STASIS_TRY(unlocked.Unlock(what));
  sys::UniqueFd slave(ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
  if (!slave.valid()) return Error::Errno(what + ": TIOCGPTPEER");
  struct stat st;
  if (fstat(slave.get(), &st) < 0) return Error::Errno(what + ": fstat slave");
  STASIS_TRY(CheckLdisc(slave.get(), what));
  STASIS_TRY(CheckLockedTermios(m, what));

  std::vector<FdRef> slaves = STASIS_TRY(SlaveFds(ctx, st.st_dev, st.st_rdev));
  if (slaves.empty() && !no_slave_open) {
    return Error::Unsupported(
        fmt::format("{}: its slave /dev/pts/{} is open only outside the dumped tree, or was never "
                    "opened",
                    what, index));
  }
  *state.mutable_job() = STASIS_TRY(DumpJob(ctx, m, slaves, what));

  KernelTermios t;
  if (ioctl(m, kTcgets2, &t) < 0) return Error::Errno(what + ": TCGETS2");
  winsize ws;
  if (ioctl(m, TIOCGWINSZ, &ws) < 0) return Error::Errno(what + ": TIOCGWINSZ");
  state.set_packet_mode(STASIS_TRY(IntIoctl(m, TIOCGPKT, what, "TIOCGPKT")) != 0);
  state.set_master_exclusive(STASIS_TRY(IntIoctl(m, TIOCGEXCL, what, "TIOCGEXCL")) != 0);
  state.set_slave_exclusive(STASIS_TRY(IntIoctl(slave.get(), TIOCGEXCL, what, "TIOCGEXCL")) != 0);
  Queues q = STASIS_TRY(DumpQueues(m, slave.get(), t, state.packet_mode(), what));

  state.set_flags(in.info.flags & ~O_CLOEXEC);
  state.set_index(index);
  state.set_devpts_dev(st.st_dev);
  state.set_slave_ino(st.st_ino);
  state.set_slave_uid(st.st_uid);
  state.set_slave_gid(st.st_gid);
  state.set_slave_mode(st.st_mode & 07777);
  *state.mutable_termios() = ToProto(t);
  state.mutable_winsize()->set_rows(ws.ws_row);
  state.mutable_winsize()->set_cols(ws.ws_col);
  state.mutable_winsize()->set_xpixel(ws.ws_xpixel);
  state.mutable_winsize()->set_ypixel(ws.ws_ypixel);
  for (image::PtyInputLine& line : q.lines) *state.add_input_lines() = std::move(line);
  state.set_input_tail(std::move(q.tail));
  state.set_output(std::move(q.output));
  state.set_slave_closed(slaves.empty());
  ctx.State<DumpState>().records.insert(JobRecord(st.st_dev, st.st_ino, state.job()));
  file->mutable_state()->PackFrom(state);
  return Ok();
}

Status DumpSlave(DumpContext& ctx, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  STASIS_TRY(CheckFlags(in, what));
  winsize ws;
  if (ioctl(in.local.get(), TIOCGWINSZ, &ws) < 0) {
    if (errno == EIO) return Error::Unsupported(what + ": a hung-up terminal");
    return Error::Errno(what + ": TIOCGWINSZ");
  }
  uint32_t index = SlaveIndex(in.st.st_rdev);
  std::optional<image::PtyJob> job =
      FindJobRecord(ctx.State<DumpState>().records, in.st.st_dev, in.st.st_ino);
  if (!job) {
    std::vector<FdRef> masters = STASIS_TRY(MasterFds(ctx, index));
    if (masters.empty()) return DumpExternal(ctx, in, file);
    return Error::Unsupported(fmt::format(
        "{}: its master (pid {} fd {}) comes after it in the tree; a slave before its master is "
        "not supported yet",
        what, masters[0].pid, masters[0].fd));
  }
  image::PtySlaveState state;
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  state.set_index(index);
  state.set_devpts_dev(in.st.st_dev);
  state.set_slave_ino(in.st.st_ino);
  *state.mutable_job() = *job;
  file->mutable_state()->PackFrom(state);
  return Ok();
}

// The devpts instance's own ptmx, not /dev/ptmx: TIOCGPTPEER (a later
// dump's, the tree's) finds the slave through the master's path, and from
// /dev/ptmx that is the "pts" mounted next to it in the restorer's mount
// namespace, gone (ENODEV) once a restorer with a namespace of its own
// (`ip netns exec`, a migration's receiver on an emulated node) has exited.
// Root opens it whatever its ptmxmode.
Result<sys::UniqueFd> OpenPtmx(uint32_t accmode, const std::string& what) {
  int flags = static_cast<int>(accmode) | O_NOCTTY | O_CLOEXEC;
  sys::UniqueFd m(open("/dev/pts/ptmx", flags));
  if (m.valid()) return m;
  m = sys::UniqueFd(open("/dev/ptmx", flags));
  if (!m.valid()) return Error::Errno(what + ": open /dev/pts/ptmx and /dev/ptmx");
  return m;
}

// A new master, at the dumped index when that one is free: devpts hands
// out the lowest free index, so lower ones are held meanwhile.
Result<sys::UniqueFd> OpenMaster(uint32_t want, uint32_t accmode, const std::string& what) {
  std::vector<sys::UniqueFd> held;
  for (int i = 0;; ++i) {
    sys::UniqueFd m = STASIS_TRY(OpenPtmx(accmode, what));
    unsigned index = 0;
    if (ioctl(m.get(), TIOCGPTN, &index) < 0) return Error::Errno(what + ": TIOCGPTN");
    if (index >= want || i + 1 >= kMaxIndexTries || want - index >= kMaxIndexTries) return m;
    held.push_back(std::move(m));
  }
}

Result<sys::UniqueFd> RestoreMaster(RestoreContext& ctx, const image::File& file,
                                    const image::PtyMasterState& state) {
  std::string what = fmt::format("pty {}", state.index());
  KernelTermios t = STASIS_TRY_CTX(FromProto(state.termios()), what);
  sys::UniqueFd m = STASIS_TRY(OpenMaster(state.index(), state.flags() & O_ACCMODE, what));
  int zero = 0, one = 1;
  if (ioctl(m.get(), TIOCSPTLCK, &zero) < 0) return Error::Errno(what + ": unlock");
  sys::UniqueFd slave(ioctl(m.get(), TIOCGPTPEER, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
  if (!slave.valid()) return Error::Errno(what + ": TIOCGPTPEER");
  if (fchown(slave.get(), state.slave_uid(), state.slave_gid()) < 0 ||
      fchmod(slave.get(), state.slave_mode() & 07777) < 0) {
    return Error::Errno(fmt::format("{}: slave owner {}:{} mode {:o}", what, state.slave_uid(),
                                    state.slave_gid(), state.slave_mode()));
  }
  Queues q;
  q.lines.assign(state.input_lines().begin(), state.input_lines().end());
  q.tail = state.input_tail();
  q.output = state.output();
  STASIS_TRY(FeedQueues(slave.get(), t, q, what));  // ends with termios t
  winsize ws = {};
  ws.ws_row = static_cast<unsigned short>(state.winsize().rows());
  ws.ws_col = static_cast<unsigned short>(state.winsize().cols());
  ws.ws_xpixel = static_cast<unsigned short>(state.winsize().xpixel());
  ws.ws_ypixel = static_cast<unsigned short>(state.winsize().ypixel());
  if (ioctl(m.get(), TIOCSWINSZ, &ws) < 0) return Error::Errno(what + ": TIOCSWINSZ");
  if (state.master_exclusive() && ioctl(m.get(), TIOCEXCL) < 0) {
    return Error::Errno(what + ": TIOCEXCL master");
  }
  if (state.slave_exclusive() && ioctl(slave.get(), TIOCEXCL) < 0) {
    return Error::Errno(what + ": TIOCEXCL slave");
  }
  // Last: termios changes would otherwise queue status bytes.
  if (state.packet_mode() && ioctl(m.get(), TIOCPKT, &one) < 0) {
    return Error::Errno(what + ": TIOCPKT");
  }
  if (fcntl(m.get(), F_SETFL, state.flags() & kSettableFlags) < 0) {
    return Error::Errno(fmt::format("{}: F_SETFL {:#o}", what, state.flags()));
  }
  ctx.State<RestoreState>().masters[{state.devpts_dev(), state.slave_ino()}] = file.id();
  // Our slave stays open until every File exists: closing the last slave
  // would mark the pair hung up for the master.
  if (!state.slave_closed()) ctx.keep_alive.push_back(std::move(slave));
  return m;
}

Result<sys::UniqueFd> RestoreSlave(RestoreContext& ctx, const image::PtySlaveState& state) {
  std::string what = fmt::format("/dev/pts/{} (as dumped)", state.index());
  // The master's restore filed the pair under its dump-time devpts (dev,
  // ino).
  const auto& masters = ctx.State<RestoreState>().masters;
  auto owner = masters.find({state.devpts_dev(), state.slave_ino()});
  auto master = owner == masters.end() ? ctx.local_fds.end() : ctx.local_fds.find(owner->second);
  if (master == ctx.local_fds.end()) {
    return Error::Corrupt(what + ": the image has no master for this slave before it");
  }
  // TIOCGPTPEER hands its flags to dentry_open() as they are: O_CLOEXEC
  // would stay in f_flags (fdinfo would report every fd on it close-on-
  // exec at the next dump), and O_LARGEFILE is only added when asked.
  int flags = static_cast<int>(state.flags() & (O_ACCMODE | kKernelLargefile)) | O_NOCTTY;
  sys::UniqueFd fd(ioctl(master->second, TIOCGPTPEER, flags));
  if (!fd.valid()) return Error::Errno(what + ": TIOCGPTPEER");
  if (fcntl(fd.get(), F_SETFD, FD_CLOEXEC) < 0) return Error::Errno(what + ": FD_CLOEXEC");
  if (fcntl(fd.get(), F_SETFL, state.flags() & kSettableFlags) < 0) {
    return Error::Errno(fmt::format("{}: F_SETFL {:#o}", what, state.flags()));
  }
  return fd;
}

// An int for an injected ioctl, at the start of the task's scratch area.
Result<uint64_t> PutInt(RemoteTask& task, int value) { return task.Put(&value, sizeof value, 0); }

}  // namespace

bool Matches(const FdDumpInput& in) {
  return S_ISCHR(in.st.st_mode) && (IsMasterRdev(in.st.st_rdev) || IsSlaveRdev(in.st.st_rdev) ||
                                    IsExternalOnlyRdev(in.st.st_rdev));
}

Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file) {
  if (IsMasterRdev(in.st.st_rdev)) return DumpMaster(ctx, in, file);
  if (IsExternalOnlyRdev(in.st.st_rdev)) return DumpExternal(ctx, in, file);
  return DumpSlave(ctx, in, file);
}

Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file) {
  image::PtyMasterState master;
  if (file.state().UnpackTo(&master)) return RestoreMaster(ctx, file, master);
  image::PtySlaveState slave;
  if (file.state().UnpackTo(&slave)) return RestoreSlave(ctx, slave);
  image::ExternalTtyState external;
  if (file.state().UnpackTo(&external)) return RestoreExternal(ctx, external);
  return Error::Corrupt("pty state does not parse");
}

Status AfterInstall(RemoteTask& task, const image::Process& proc, const image::File& file, int fd) {
  image::PtySlaveState state;
  if (!file.state().UnpackTo(&state) || state.job().session() != proc.pid()) return Ok();
  // The session leader (setsid() already ran) takes its terminal back; for
  // the second fd on it this is a no-op.
  STASIS_TRY(task.Call("ioctl(TIOCSCTTY)", SYS_ioctl, fd, TIOCSCTTY, 0));
  return Ok();
}

Status AfterTree(RemoteTask& task, const image::Process& proc, const image::File& file, int fd) {
  image::PtyMasterState master;
  if (file.state().UnpackTo(&master)) {
    if (!master.locked()) return Ok();
    uint64_t one = STASIS_TRY(PutInt(task, 1));
    STASIS_TRY(task.Call("ioctl(TIOCSPTLCK)", SYS_ioctl, fd, TIOCSPTLCK, one));
    return Ok();
  }
  image::PtySlaveState state;
  if (!file.state().UnpackTo(&state)) {
    // The external terminal's job state is the restorer's (restore.cc).
    if (file.state().Is<image::ExternalTtyState>()) return Ok();
    return Error::Corrupt("pty state does not parse");
  }
  const image::PtyJob& job = state.job();
  if (job.session() != proc.pid() || job.foreground_pgrp() == 0) return Ok();
  // Once set, a second TIOCSPGRP from the leader (now in the background)
  // would send it SIGTTOU: look first.
  uint64_t addr = STASIS_TRY(PutInt(task, 0));
  STASIS_TRY(task.Call("ioctl(TIOCGPGRP)", SYS_ioctl, fd, TIOCGPGRP, addr));
  int current = 0;
  STASIS_TRY(task.Get(addr, &current, sizeof current));
  if (current == job.foreground_pgrp()) return Ok();
  addr = STASIS_TRY(PutInt(task, job.foreground_pgrp()));
  STASIS_TRY_CTX(task.Call("ioctl(TIOCSPGRP)", SYS_ioctl, fd, TIOCSPGRP, addr),
                 fmt::format("foreground group {}", job.foreground_pgrp()));
  return Ok();
}

const FdKind kKind = {
    .name = kName,
    .summary =
        "Pseudo-terminals: /dev/ptmx masters and /dev/pts slaves, termios, window size, unread "
        "data both ways, controlling terminal and foreground group; --shell-job",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
    .after_install = AfterInstall,
    .after_tree = AfterTree,
    .after_setsid = AfterInstall,
};

}  // namespace stasis::kinds::pty
