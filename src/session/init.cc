#include "session/init.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "session/channel.h"
#include "session/session.h"
#include "sys/cgroup.h"
#include "sys/kernel_abi.h"
#include "sys/pidfds.h"

namespace stasis::session {
namespace {

[[noreturn]] void Die(const char* what, int err) {
  fmt::print(stderr, "stasis: session init: {}: {}\n", what, strerror(err));
  _exit(125);
}

void CloseRange(int first, int last) {
  if (first <= last) syscall(sys::abi::kNrCloseRange, first, last, 0);
}

// Keeps stdio and the control socket, closes everything else: the
// launcher's other fds (its state-directory lock among them) must not live
// on in a long-lived init. Returns the socket's new number.
int KeepOnlyStdioAnd(int control) {
  int fd = fcntl(control, F_DUPFD_CLOEXEC, 3);
  if (fd < 0) Die("dup the control socket", errno);
  CloseRange(3, fd - 1);
  CloseRange(fd + 1, ~0u >> 1);
  if (control < 3) close(control);
  return fd;
}

void SetUpMounts() {
  // Our mounts must not leak back to the host, but host mounts may still
  // reach us (slave, as the restore's init does).
  if (mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) < 0) {
    Die("make / a slave mount", errno);
  }
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) < 0) {
    Die("mount /proc", errno);
  }
}

// Forks and execs CMD; its pidfd (invalid if the fork failed) goes to *pidfd.
StartedMessage SpawnCommand(const InitConfig& config, sys::UniqueFd* pidfd) {
  std::vector<char*> argv;
  for (const std::string& arg : config.command) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  int report[2];
  if (pipe2(report, O_CLOEXEC) < 0) return {errno, 0};
  pid_t pid = fork();
  if (pid == 0) {
    close(report[0]);
    sigprocmask(SIG_SETMASK, &config.command_sigmask, nullptr);
    execvp(argv[0], argv.data());
    int err = errno;
    (void)!write(report[1], &err, sizeof(err));
    _exit(err == ENOENT ? 127 : 126);
  }
  int fork_errno = errno;
  close(report[1]);
  if (pid < 0) {
    close(report[0]);
    return {fork_errno, 0};
  }
  // The pipe closes on a successful exec (O_CLOEXEC) or carries its errno.
  int exec_errno = 0;
  ssize_t n;
  do {
    n = read(report[0], &exec_errno, sizeof(exec_errno));
  } while (n < 0 && errno == EINTR);
  close(report[0]);
  if (n != sizeof(exec_errno)) exec_errno = 0;
  Result<sys::UniqueFd> fd = sys::PidfdOpen(pid);
  if (fd.ok()) *pidfd = std::move(fd).value();
  return {exec_errno, pid};
}

int ExitCode(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Reaps and forwards until CMD exits; returns its exit code.
int ReapUntilRootExits(pid_t root) {
  sigset_t set = ForwardedSignals();
  sigaddset(&set, SIGCHLD);
  for (;;) {
    for (;;) {
      int status;
      pid_t p = waitpid(-1, &status, WNOHANG | __WALL);
      if (p == root) return ExitCode(status);
      if (p < 0 && errno == ECHILD) return 255;  // cannot happen while root lives
      if (p <= 0) break;
    }
    siginfo_t info;
    int sig = sigwaitinfo(&set, &info);
    // si_code <= 0: sent by a process (SI_USER, SI_QUEUE, SI_TKILL), not
    // by the kernel to the terminal's foreground group, which CMD is in.
    if (sig > 0 && sig != SIGCHLD && info.si_code <= 0) kill(root, sig);
  }
}

void KillAndReapTheRest() {
  // From a namespace's PID 1, kill(-1) reaches every other process in it.
  kill(-1, SIGKILL);
  for (;;) {
    pid_t p = waitpid(-1, nullptr, __WALL);
    if (p < 0 && errno != EINTR) return;
  }
}

void Warn(const std::string& what, const Error& error) {
  fmt::print(stderr, "stasis: session init: {}: {}\n", what, error.ToString());
}

}  // namespace

sigset_t ForwardedSignals() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2}) sigaddset(&set, sig);
  return set;
}

[[noreturn]] void InitMain(const InitConfig& config) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  sigset_t blocked = ForwardedSignals();
  sigaddset(&blocked, SIGCHLD);
  sigprocmask(SIG_BLOCK, &blocked, nullptr);
  prctl(PR_SET_NAME, "stasis-init");
  int control = KeepOnlyStdioAnd(config.control_fd);
  SetUpMounts();

  std::string go(kMaxGoMessage, '\0');
  Result<size_t> n = ReceiveMessage(control, go.data(), go.size());
  if (!n.ok()) _exit(1);  // the launcher gave up; PDEATHSIG may not have fired yet
  Result<SessionEnd> end = DecodeSessionEnd(std::string_view(go.data(), *n));
  if (!end.ok()) Die("bad go message", EINVAL);
  if (config.detach) setsid();  // out of the launcher's terminal job control

  sys::UniqueFd pidfd;
  StartedMessage started = SpawnCommand(config, &pidfd);
  if (!SendMessage(control, &started, sizeof(started), pidfd.get()).ok()) _exit(1);
  pidfd.reset();
  char op = 0;
  if (!ReceiveExactly(control, &op, 1).ok() || op != kCommit) _exit(1);
  if (config.detach) prctl(PR_SET_PDEATHSIG, 0);
  // The launcher may exit as soon as it reads this: PDEATHSIG is settled.
  if (!SendMessage(control, &kCommitAck, 1).ok()) _exit(1);
  close(control);
  if (config.detach) {
    // Hold no terminal or pipe of whoever ran `stasis run -d`: CMD has its own.
    int devnull = open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 3 && devnull >= 0; ++fd) dup2(devnull, fd);
    if (devnull > 2) close(devnull);
  }

  int code = started.ns_pid > 0 ? ReapUntilRootExits(started.ns_pid) : 127;
  KillAndReapTheRest();
  EndSession(*end);
  _exit(code);
}

std::string EncodeSessionEnd(const SessionEnd& end) {
  nlohmann::json j = {{"state_dir", end.state_dir}, {"name", end.name},
                      {"init_pid", end.init_pid},   {"init_start_time", end.init_start_time},
                      {"cgroup", end.cgroup},       {"cgroup_mount", end.cgroup_mount}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Result<SessionEnd> DecodeSessionEnd(std::string_view text) {
  auto j = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  auto str = [&](const char* key) {
    return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
  };
  auto num = [&](const char* key) -> int64_t {
    return j.contains(key) && j[key].is_number_integer() ? j[key].get<int64_t>() : 0;
  };
  if (j.is_discarded() || !j.is_object()) return Error::Invalid("session end: not an object");
  SessionEnd end;
  end.state_dir = str("state_dir");
  end.name = str("name");
  end.init_pid = static_cast<pid_t>(num("init_pid"));
  end.init_start_time = static_cast<uint64_t>(num("init_start_time"));
  end.cgroup = str("cgroup");
  end.cgroup_mount = str("cgroup_mount");
  if (end.state_dir.empty() || end.name.empty() || end.init_pid <= 0) {
    return Error::Invalid("session end: missing fields");
  }
  return end;
}

void EndSession(const SessionEnd& end) {
  if (!end.cgroup.empty()) {
    // A populated cgroup cannot be removed, and we are its last member.
    std::string procs = end.cgroup_mount + "/cgroup.procs";
    int fd = open(procs.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "0", 1) != 1) {
      Warn("leave cgroup " + end.cgroup, Error::Errno("write " + procs));
    }
    if (fd >= 0) close(fd);
    Result<sys::Cgroup> cgroup = sys::Cgroup::Open(end.cgroup);
    Status removed = cgroup.ok() ? cgroup->Remove() : Ok();
    if (!removed.ok()) {
      // Keep the metadata: the session then shows as gone, and `stasis ps`
      // removes the cgroup once this init has exited.
      return Warn("end of session " + end.name, removed.error());
    }
  }
  Result<StateDirLock> lock = StateDirLock::Acquire(end.state_dir);
  if (!lock.ok()) return Warn("end of session " + end.name, lock.error());
  SessionInfo info;
  info.name = end.name;
  info.init_pid = end.init_pid;
  info.init_start_time = end.init_start_time;
  Status removed = RemoveSessionMetadata(end.state_dir, info);
  if (!removed.ok()) Warn("end of session " + end.name, removed.error());
}

}  // namespace stasis::session
