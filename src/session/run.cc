#include "session/run.h"

#include <fmt/format.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <optional>
#include <utility>

#include "net/isolated_net.h"
#include "session/channel.h"
#include "session/init.h"
#include "sys/cgroup.h"
#include "sys/kernel_abi.h"
#include "sys/netns.h"
#include "sys/pidfds.h"
#include "sys/proc.h"
#include "sys/timens.h"

namespace stasis::session {
namespace {

// The session's init as seen by the launcher: SIGKILLed and reaped on
// destruction unless committed, which takes the whole namespace with it.
class InitHandle {
 public:
  // new_time_ns: the session gets a time namespace of its own (offsets 0,
  // made by clone3 itself, so the launcher's own stays as it was).
  static Result<InitHandle> Clone(InitConfig config, bool new_time_ns) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
      return Error::Errno("socketpair for the session init");
    }
    config.control_fd = sv[1];
    sys::abi::CloneArgs args = {};
    args.flags = CLONE_NEWPID | CLONE_NEWNS | (new_time_ns ? CLONE_NEWTIME : 0);
    args.exit_signal = SIGCHLD;
    long r = syscall(sys::abi::kNrClone3, &args, sizeof(args));
    if (r == 0) {
      close(sv[0]);
      InitMain(config);
    }
    Error error =
        Error::Errno(fmt::format("clone3(CLONE_NEWPID|CLONE_NEWNS{}) for the session init",
                                 new_time_ns ? "|CLONE_NEWTIME" : ""));
    close(sv[1]);
    if (r < 0) {
      close(sv[0]);
      return error;
    }
    return InitHandle(static_cast<pid_t>(r), sys::UniqueFd(sv[0]));
  }
  InitHandle(InitHandle&& o) noexcept
      : pid_(std::exchange(o.pid_, 0)), control_(std::move(o.control_)) {}
  InitHandle& operator=(InitHandle&&) = delete;
  ~InitHandle() { Kill(); }

  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = 0;
  }
  // The session runs on its own: nothing to kill any more.
  void Commit() {
    pid_ = 0;
    control_.reset();
  }
  pid_t pid() const { return pid_; }
  int control() const { return control_.get(); }

 private:
  InitHandle(pid_t pid, sys::UniqueFd control) : pid_(pid), control_(std::move(control)) {}
  pid_t pid_ = 0;
  sys::UniqueFd control_;
};

// Blocks signals for its lifetime. Those that arrive after the session
// ended were meant for it: they are dropped rather than let loose on us.
class ScopedSigmask {
 public:
  explicit ScopedSigmask(const sigset_t& block) {
    sigprocmask(SIG_BLOCK, &block, &old_);
    sigemptyset(&added_);
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sigismember(&block, sig) == 1 && sigismember(&old_, sig) == 0) sigaddset(&added_, sig);
    }
  }
  ~ScopedSigmask() {
    struct timespec zero = {0, 0};
    while (sigtimedwait(&added_, nullptr, &zero) > 0) {
    }
    sigprocmask(SIG_SETMASK, &old_, nullptr);
  }
  const sigset_t& old() const { return old_; }

 private:
  sigset_t old_;
  sigset_t added_;
};

sigset_t WaitedSignals() {
  sigset_t set = ForwardedSignals();
  sigaddset(&set, SIGCHLD);
  return set;
}

// Puts the init in the session's cgroup, lets it start CMD, registers the
// session and commits. *cgroup is set once this session owns one.
Status Launch(InitHandle& init, const std::string& state_dir,
              const std::optional<std::string>& mount, SessionInfo* info,
              std::optional<sys::Cgroup>* cgroup, int* exec_errno) {
  if (mount) {
    *cgroup = STASIS_TRY(ClaimSessionCgroup(state_dir, info->name));
    info->cgroup = (*cgroup)->path();
    STASIS_TRY_CTX((*cgroup)->AddProcess(info->init_pid), "session init");
  } else {
    STASIS_TRY(ClaimSessionName(state_dir, info->name));
  }
  SessionEnd end{state_dir,    info->name,        info->init_pid, info->init_start_time,
                 info->cgroup, mount.value_or("")};
  std::string go = EncodeSessionEnd(end);
  STASIS_TRY_CTX(SendMessage(init.control(), go.data(), go.size()), "session init");
  StartedMessage started;
  sys::UniqueFd pidfd;
  STASIS_TRY_CTX(ReceiveExactly(init.control(), &started, sizeof(started), &pidfd), "session init");
  *exec_errno = started.exec_errno;
  if (pidfd.valid()) info->root_pid = STASIS_TRY(sys::PidOfPidfd(pidfd.get()));
  if (started.exec_errno == 0) STASIS_TRY(WriteSessionMetadata(state_dir, *info));
  STASIS_TRY_CTX(SendMessage(init.control(), &kCommit, 1), "commit to the session init");
  char ack = 0;
  STASIS_TRY_CTX(ReceiveExactly(init.control(), &ack, 1), "commit to the session init");
  if (ack != kCommitAck) return Error::Invalid("the session init did not acknowledge the commit");
  return Ok();
}

struct Started {
  SessionInfo info;
  int exec_errno = 0;
};

// The network of an isolated session: the address asked for, or the lowest
// one that no session of this state directory holds.
Result<net::NetConfig> PlanSessionNet(const RunOptions& options, const std::string& state_dir,
                                      Logger& log) {
  std::vector<uint32_t> taken;
  for (const SessionInfo& s : STASIS_TRY(ListSessions(state_dir, log))) {
    if (s.net && s.state == SessionState::kRunning) taken.push_back(s.net->address);
  }
  return net::PlanNet(options.address, options.bridge, taken);
}

// A session's clocks are its own, so that they go on where it is restored,
// on this host or another (restore/spawn.h). A kernel without time
// namespaces still runs sessions, with the host's clocks.
Result<bool> SessionTimeNamespace(Logger& log) {
  if (STASIS_TRY(sys::TimeNamespaceId(0)) != 0) return true;
  log.Warn(
      "no time namespaces on this kernel (CONFIG_TIME_NS): the session keeps the host's "
      "clocks, and its CLOCK_MONOTONIC will jump when it is restored on another host");
  return false;
}

Result<Started> Start(const RunOptions& options, const std::string& state_dir,
                      const sigset_t& command_sigmask, Logger& log) {
  StateDirLock lock = STASIS_TRY(StateDirLock::Acquire(state_dir));
  std::optional<std::string> mount;
  if (Result<std::string> m = sys::FindCgroup2Mount(); m.ok()) {
    mount = std::move(m).value();
  } else {
    log.Warn(fmt::format("{}: the session gets no cgroup (no freezing, usage from /proc)",
                         m.error().ToString()));
  }
  if (!options.name.empty()) STASIS_TRY(ClaimSessionName(state_dir, options.name));
  bool time_ns = STASIS_TRY(SessionTimeNamespace(log));
  // Declared before the init: on failure the init dies first, then the
  // veth pair goes.
  std::optional<net::IsolatedNet> net;
  std::optional<net::NetConfig> net_config;
  std::optional<sys::ScopedNetns> inside_net;
  if (options.net_isolated) {
    net_config = STASIS_TRY(PlanSessionNet(options, state_dir, log));
    net.emplace(STASIS_TRY_CTX(net::IsolatedNet::Create(&*net_config, /*host_up=*/true),
                               "session network"));
    // The init is cloned from inside, and all the session with it.
    inside_net.emplace(STASIS_TRY(sys::ScopedNetns::Enter(net->netns_fd())));
  }
  InitHandle init = STASIS_TRY(
      InitHandle::Clone(InitConfig{options.command, command_sigmask, options.detach}, time_ns));
  if (inside_net) STASIS_TRY(inside_net->Leave());
  Started started;
  SessionInfo& info = started.info;
  info.net = net_config;
  info.name = options.name.empty() ? fmt::format("s-{}", init.pid()) : options.name;
  info.init_pid = init.pid();
  info.command = options.command;
  info.created_unix = time(nullptr);
  info.init_start_time = STASIS_TRY(ProcessStartTime(init.pid()));
  std::optional<sys::Cgroup> cgroup;
  Status launched = Launch(init, state_dir, mount, &info, &cgroup, &started.exec_errno);
  if (launched.ok()) {
    init.Commit();
    if (net) net->Commit();
    return started;
  }
  // Killing PID 1 kills the namespace; then nothing holds the cgroup.
  init.Kill();
  if (cgroup) {
    (void)cgroup->KillAll();
    (void)cgroup->Remove();
  }
  (void)RemoveSessionMetadata(state_dir, info);
  return std::move(launched).error().Context("start session " + info.name);
}

Result<int> WaitForeground(pid_t init_pid) {
  sigset_t set = WaitedSignals();
  for (;;) {
    int status;
    pid_t p = waitpid(init_pid, &status, WNOHANG);
    if (p == init_pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (p < 0 && errno != EINTR) return Error::Errno("wait for the session init");
    siginfo_t si;
    int sig = sigwaitinfo(&set, &si);
    // Pass on what a process sent us; a terminal's ^C already reached the
    // session, which shares our process group.
    if (sig > 0 && sig != SIGCHLD && si.si_code <= 0) kill(init_pid, sig);
  }
}

// The init cleans up itself; this is for an init that was SIGKILLed.
void CleanUpAfter(const std::string& state_dir, SessionInfo info, Logger& log) {
  info.state = SessionState::kGone;
  Result<StateDirLock> lock = StateDirLock::Acquire(state_dir);
  Status cleaned = lock.ok() ? CleanupSession(state_dir, info) : Status(lock.error());
  if (!cleaned.ok()) {
    log.Warn(fmt::format("clean up session {}: {}", info.name, cleaned.error().ToString()));
  }
}

}  // namespace

Result<RunOutcome> RunSession(const RunOptions& options, Logger& log) {
  if (options.command.empty()) return Error::Invalid("no command to run");
  if (!options.net_isolated && (!options.address.empty() || !options.bridge.empty())) {
    return Error::Invalid("--address and --bridge need --net=isolated");
  }
  if (!options.name.empty()) STASIS_TRY(ValidateName(options.name));
  std::error_code ec;
  std::string state_dir = std::filesystem::absolute(ResolveStateDir(options.state_dir), ec);
  if (ec) return Error::FromErrno("state directory", ec.value());
  // Blocked from before the init exists, so no signal sent meanwhile is lost:
  // it is passed on once the session runs.
  ScopedSigmask mask(WaitedSignals());
  Started started = STASIS_TRY(Start(options, state_dir, mask.old(), log));
  RunOutcome outcome;
  outcome.info = std::move(started.info);
  outcome.exec_errno = started.exec_errno;
  if (options.detach) {
    if (outcome.exec_errno != 0) outcome.exit_code = outcome.exec_errno == ENOENT ? 127 : 126;
    return outcome;
  }
  outcome.exit_code = STASIS_TRY(WaitForeground(outcome.info.init_pid));
  CleanUpAfter(state_dir, outcome.info, log);
  return outcome;
}

}  // namespace stasis::session
