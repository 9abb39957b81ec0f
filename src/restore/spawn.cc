#include "restore/spawn.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "sys/fd_passing.h"
#include "sys/kernel_abi.h"
#include "sys/pidfds.h"
#include "sys/proc.h"
#include "sys/timens.h"

namespace stasis::restore {
namespace {

// kHold passes an fd for the init to hold (SCM_RIGHTS); kCommit with
// slot 1 keeps the init guarding the tree until kPagesIn (spawn.h).
enum class Op : uint32_t { kCreate = 1, kCommit = 2, kHold = 3, kPagesIn = 4 };
constexpr int kMaxHeld = 4096;
struct Request {
  Op op;
  int32_t pid;
  int32_t slot;
};
struct Reply {
  int32_t err;  // 0 or an errno
};
// The init's first message: ready, or the step of its set-up that failed.
enum class InitStep : int32_t { kReady = 0, kTimeNamespace = 1, kSlaveMounts = 2, kProcMount = 3 };
struct InitReady {
  InitStep step;
  int32_t err;
};

long Clone3(sys::abi::CloneArgs* args) { return syscall(sys::abi::kNrClone3, args, sizeof(*args)); }

// Runs in the new puppet. Only async-signal-safe calls from here on.
[[noreturn]] void PuppetMain(int restorer_pidfd, int slot, int time_ns, int ready_w) {
  if (time_ns >= 0) {
    // Before anything else: the puppet is still single-threaded and has
    // read no clock.
    int err = sys::EnterTimeNamespace(time_ns);
    if (err != 0) {
      (void)!write(ready_w, &err, sizeof(err));
      _exit(127);
    }
  }
  if (restorer_pidfd != slot && dup2(restorer_pidfd, slot) < 0) _exit(127);
  // Closing the rest (the ready pipe among them) tells the creator we are set.
  if (slot > 0) syscall(sys::abi::kNrCloseRange, 0, slot - 1, 0);
  syscall(sys::abi::kNrCloseRange, slot + 1, ~0u, 0);
  for (;;) pause();
}

// Creates a puppet as a child of the calling process, in the time namespace
// of `time_ns` when it is >= 0; returns its pidfd or -errno.
int SpawnPuppet(pid_t pid, int slot, int restorer_pidfd, int time_ns) {
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) < 0) return -errno;
  // Keep the ready pipe above the slot so dup2 onto the slot cannot close it.
  int ready_w = fcntl(ready[1], F_DUPFD_CLOEXEC, slot + 1);
  close(ready[1]);
  if (ready_w < 0) {
    close(ready[0]);
    return -errno;
  }
  int pidfd = -1;
  sys::abi::CloneArgs args = {};
  args.flags = CLONE_PIDFD;
  args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
  args.exit_signal = SIGCHLD;
  args.set_tid = reinterpret_cast<uint64_t>(&pid);
  args.set_tid_size = 1;
  long r = Clone3(&args);
  if (r == 0) PuppetMain(restorer_pidfd, slot, time_ns, ready_w);
  int err = r < 0 ? errno : 0;
  close(ready_w);
  // Nothing read: the puppet closed the pipe, it is set. An int: its errno.
  int puppet_err = 0;
  ssize_t n = 0;
  do {
    n = r > 0 ? read(ready[0], &puppet_err, sizeof(puppet_err)) : 0;
  } while (n < 0 && errno == EINTR);
  close(ready[0]);
  if (n == sizeof(puppet_err) && puppet_err != 0) {
    close(pidfd);
    waitpid(static_cast<pid_t>(r), nullptr, __WALL);
    return -puppet_err;
  }
  return r < 0 ? -err : pidfd;
}

// A Request, and the fd that came with it (kHold), or -1. Returns false on
// end of file or an error. Async-signal-safe.
bool ReceiveRequest(int control, Request* req, int* fd) {
  *fd = -1;
  char cbuf[CMSG_SPACE(sizeof(int))];
  struct iovec iov = {req, sizeof(*req)};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof(cbuf);
  ssize_t n;
  do {
    n = recvmsg(control, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
  if (c != nullptr && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
    memcpy(fd, CMSG_DATA(c), sizeof(int));
  }
  return n == sizeof(*req);
}

// After Commit: reap everything, pass termination signals to the root, and
// exit with the root's status once the namespace is empty.
//
// Guarding (a lazy restore, whose pages the restorer still serves): the
// init holds a copy of every userfaultfd (`held`), so that the restorer's
// death does not unregister them, which would let a faulting thread go on
// with a zero page where its data should be. When the restorer's end of
// `control` closes before it said every page is in (kPagesIn), the init
// kills every process of the namespace and only then lets the userfaultfds
// go: the tree dies rather than run with memory it never had.
[[noreturn]] void ReaperLoop(pid_t root, int control, int* held, int nheld) {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGHUP}) sigaddset(&set, sig);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC);
  if (sfd < 0) _exit(1);
  auto let_go = [&] {
    for (int i = 0; i < nheld; ++i) close(held[i]);
    nheld = 0;
    close(control);
    control = -1;
  };
  int exit_code = 0;
  for (;;) {
    for (;;) {
      int status;
      pid_t p = waitpid(-1, &status, WNOHANG | __WALL);
      if (p < 0 && errno == ECHILD) _exit(exit_code);
      if (p <= 0) break;
      if (p == root) exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    struct pollfd fds[2] = {{sfd, POLLIN, 0}, {control, POLLIN, 0}};
    if (poll(fds, control >= 0 ? 2 : 1, -1) < 0) continue;
    if (fds[0].revents & POLLIN) {
      struct signalfd_siginfo info;
      if (read(sfd, &info, sizeof(info)) == sizeof(info) && info.ssi_signo != SIGCHLD) {
        kill(root, static_cast<int>(info.ssi_signo));
      }
    }
    if (control >= 0 && fds[1].revents != 0) {
      Request req;
      int fd;
      bool got = ReceiveRequest(control, &req, &fd);
      if (fd >= 0) close(fd);
      if (!got || req.op != Op::kPagesIn) kill(-1, SIGKILL);
      let_go();
    }
  }
}

// Tells the restorer how the init's set-up ended; exits if it failed.
void SendReady(int control, InitStep step, int err) {
  InitReady ready = {step, err};
  if (send(control, &ready, sizeof(ready), MSG_NOSIGNAL) != sizeof(ready) || err != 0) _exit(1);
}

[[noreturn]] void InitMain(int control, int restorer_pidfd, int time_ns) {
  // Until Commit, live no longer than the restorer: when PID 1 dies the
  // kernel kills every process of the namespace.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  // First, while single-threaded and before any puppet: they are all born
  // in the init's time namespace.
  if (time_ns >= 0) {
    int err = sys::EnterTimeNamespace(time_ns);
    if (err != 0) SendReady(control, InitStep::kTimeNamespace, err);
  }
  int devnull = open("/dev/null", O_RDWR);
  for (int fd = 0; fd < 3; ++fd) dup2(devnull, fd);
  // The restorer's other fds (the restored files among them) are not the
  // init's to hold: a lock or a pipe end the tree closes must really close.
  int keep_low = std::min(control, restorer_pidfd), keep_high = std::max(control, restorer_pidfd);
  syscall(sys::abi::kNrCloseRange, 3, keep_low - 1, 0);
  syscall(sys::abi::kNrCloseRange, keep_low + 1, keep_high - 1, 0);
  syscall(sys::abi::kNrCloseRange, keep_high + 1, ~0u, 0);
  if (mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) < 0) {
    SendReady(control, InitStep::kSlaveMounts, errno);
  }
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) < 0) {
    SendReady(control, InitStep::kProcMount, errno);
  }
  SendReady(control, InitStep::kReady, 0);
  static int held[kMaxHeld];
  int nheld = 0;
  for (;;) {
    Request req;
    int fd;
    if (!ReceiveRequest(control, &req, &fd)) _exit(1);
    if (req.op == Op::kHold) {
      Reply reply = {fd < 0 ? EBADF : (nheld == kMaxHeld ? EMFILE : 0)};
      if (reply.err == 0) {
        held[nheld++] = fd;
      } else if (fd >= 0) {
        close(fd);
      }
      if (send(control, &reply, sizeof(reply), MSG_NOSIGNAL) != sizeof(reply)) _exit(1);
      continue;
    }
    if (fd >= 0) close(fd);
    if (req.op == Op::kCommit) {
      bool guard = req.slot == 1;
      prctl(PR_SET_PDEATHSIG, 0);
      // The restorer may exit as soon as it reads this: PDEATHSIG is off now.
      Reply ack = {0};
      if (send(control, &ack, sizeof(ack), MSG_NOSIGNAL) != sizeof(ack)) _exit(1);
      close(restorer_pidfd);
      if (!guard) {
        close(control);
        for (int i = 0; i < nheld; ++i) close(held[i]);
        ReaperLoop(req.pid, -1, held, 0);
      }
      ReaperLoop(req.pid, control, held, nheld);
    }
    int pidfd = SpawnPuppet(req.pid, req.slot, restorer_pidfd, -1);
    Reply reply = {pidfd < 0 ? -pidfd : 0};
    if (!sys::SendMessage(control, &reply, sizeof(reply), pidfd).ok()) _exit(1);
    if (pidfd >= 0) close(pidfd);
  }
}

// What the init said once set up (or why it did not get there).
Status AwaitInit(int control, pid_t init) {
  InitReady ready = {};
  ssize_t n;
  do {
    n = recv(control, &ready, sizeof(ready), 0);
  } while (n < 0 && errno == EINTR);
  if (n != sizeof(ready)) {
    return Error(ErrorCode::kFailed,
                 fmt::format("the restore init (pid {}) exited before it was set up", init));
  }
  switch (ready.step) {
    case InitStep::kReady:
      return Ok();
    case InitStep::kTimeNamespace:
      return Error::FromErrno(
          "the restore init: setns(CLONE_NEWTIME) into the tree's time namespace", ready.err);
    case InitStep::kSlaveMounts:
      return Error::FromErrno("the restore init: make / a slave mount", ready.err);
    case InitStep::kProcMount:
      return Error::FromErrno("the restore init: mount /proc", ready.err);
  }
  return Error::Invalid("the restore init sent an unknown set-up step");
}

}  // namespace

Result<sys::UniqueFd> TimeNamespaceFor(const sys::KernelFeatures& features,
                                       const image::Clocks& clocks, Logger& log) {
  if (!clocks.own_time_ns()) return sys::UniqueFd();
  STASIS_TRY(features.Require({"time namespaces"},
                              "restoring a tree that had its own time namespace (its "
                              "CLOCK_MONOTONIC goes on across hosts)"));
  sys::ClockReading recorded = {clocks.monotonic_ns(), clocks.boottime_ns(), clocks.realtime_ns()};
  sys::ClockReading host = STASIS_TRY_CTX(sys::ReadHostClocks(), "the tree's time namespace");
  sys::TimeOffsets offsets =
      STASIS_TRY_CTX(sys::ContinuationOffsets(recorded, host), "the tree's time namespace");
  log.Debug(fmt::format(
      "the tree's time namespace: CLOCK_MONOTONIC {:+.3f} s, CLOCK_BOOTTIME {:+.3f} s from this "
      "host's",
      offsets.monotonic_ns / 1e9, offsets.boottime_ns / 1e9));
  return STASIS_TRY_CTX(sys::CreateTimeNamespace(offsets), "the tree's time namespace");
}

Result<Spawner> Spawner::Start(bool new_pid_ns, sys::UniqueFd time_ns) {
  Spawner s;
  s.new_pid_ns_ = new_pid_ns;
  s.restorer_pidfd_ = STASIS_TRY(sys::PidfdOpen(getpid()));
  if (!new_pid_ns) {
    s.time_ns_ = std::move(time_ns);
    return s;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    return Error::Errno("socketpair for the restore init");
  }
  sys::abi::CloneArgs args = {};
  args.flags = CLONE_NEWPID | CLONE_NEWNS;
  args.exit_signal = SIGCHLD;
  long r = Clone3(&args);
  if (r == 0) {
    close(sv[0]);
    InitMain(sv[1], s.restorer_pidfd_.get(), time_ns.get());
  }
  Error clone_error = Error::Errno("clone3(CLONE_NEWPID|CLONE_NEWNS) for the restore init");
  close(sv[1]);
  if (r < 0) {
    close(sv[0]);
    return clone_error;
  }
  s.init_pid_ = static_cast<pid_t>(r);
  s.control_.reset(sv[0]);
  // On failure the Spawner's destructor kills and reaps the init.
  STASIS_TRY(AwaitInit(s.control_.get(), s.init_pid_));
  return s;
}

Spawner::Spawner(Spawner&& o) noexcept
    : new_pid_ns_(o.new_pid_ns_),
      init_pid_(std::exchange(o.init_pid_, 0)),
      control_(std::move(o.control_)),
      restorer_pidfd_(std::move(o.restorer_pidfd_)),
      time_ns_(std::move(o.time_ns_)),
      committed_(std::exchange(o.committed_, true)) {}

Spawner::~Spawner() {
  if (committed_ || init_pid_ == 0) return;
  kill(init_pid_, SIGKILL);
  waitpid(init_pid_, nullptr, 0);
}

Result<Puppet> Spawner::CreatePuppet(pid_t pid, int pidfd_slot) {
  Puppet puppet;
  if (!new_pid_ns_) {
    int fd = SpawnPuppet(pid, pidfd_slot, restorer_pidfd_.get(), time_ns_.get());
    if (fd < 0) {
      return Error::FromErrno(fmt::format("clone3 with PID {}{}", pid,
                                          time_ns_.valid() ? " in the tree's time namespace" : ""),
                              -fd);
    }
    puppet.pidfd.reset(fd);
  } else {
    Request req = {Op::kCreate, pid, pidfd_slot};
    if (send(control_.get(), &req, sizeof(req), MSG_NOSIGNAL) != sizeof(req)) {
      return Error::Errno("send to the restore init");
    }
    Reply reply;
    sys::UniqueFd fd;
    STASIS_TRY_CTX(sys::ReceiveExactly(control_.get(), &reply, sizeof(reply), &fd),
                   "the restore init");
    if (reply.err != 0) {
      return Error::FromErrno(fmt::format("clone3 with PID {} in the new namespace", pid),
                              reply.err);
    }
    puppet.pidfd = std::move(fd);
  }
  puppet.host_pid = STASIS_TRY(sys::PidOfPidfd(puppet.pidfd.get()));
  return puppet;
}

Status Spawner::Hold(int fd) {
  if (!new_pid_ns_) return Ok();
  Request req = {Op::kHold, 0, 0};
  STASIS_TRY_CTX(sys::SendMessage(control_.get(), &req, sizeof(req), fd),
                 "pass a userfaultfd to the restore init");
  Reply reply;
  STASIS_TRY_CTX(sys::ReceiveExactly(control_.get(), &reply, sizeof(reply)), "the restore init");
  if (reply.err != 0) return Error::FromErrno("the restore init holding a userfaultfd", reply.err);
  return Ok();
}

Result<sys::UniqueFd> Spawner::Commit(pid_t root_pid, bool guard) {
  committed_ = true;
  if (!new_pid_ns_) return sys::UniqueFd();
  Request req = {Op::kCommit, root_pid, guard ? 1 : 0};
  if (send(control_.get(), &req, sizeof(req), MSG_NOSIGNAL) != sizeof(req)) {
    return Error::Errno("commit to the restore init");
  }
  Reply ack;
  if (recv(control_.get(), &ack, sizeof(ack), 0) != sizeof(ack)) {
    return Error(ErrorCode::kFailed, "the restore init did not acknowledge the commit");
  }
  if (!guard) return sys::UniqueFd();
  return std::move(control_);
}

Status PagesIn(sys::UniqueFd guard) {
  if (!guard.valid()) return Ok();
  Request req = {Op::kPagesIn, 0, 0};
  if (send(guard.get(), &req, sizeof(req), MSG_NOSIGNAL) != sizeof(req)) {
    return Error::Errno("tell the restore init that every page is in");
  }
  return Ok();
}

}  // namespace stasis::restore
