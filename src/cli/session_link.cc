#include "cli/session_link.h"

#include <fmt/format.h>
#include <poll.h>

#include <cerrno>

#include "session/session.h"
#include "sys/pidfds.h"

namespace stasis::cli {

Status ResolveSessionDump(const std::string& state_dir, const std::string& name,
                          checkpoint::DumpOptions* options, sys::UniqueFd* init_pidfd) {
  std::string dir = session::ResolveStateDir(state_dir);
  session::SessionInfo info = STASIS_TRY(session::FindSession(dir, name));
  if (info.state != session::SessionState::kRunning) {
    return Error::NotFound(fmt::format("session {} is not running", name));
  }
  options->pid = info.root_pid;
  options->freeze_cgroup = info.cgroup;
  options->session_name = info.name;
  options->session_command = info.command;
  options->session_init_pid = info.init_pid;
  options->session_net = info.net;
  *init_pidfd = STASIS_TRY(sys::PidfdOpen(info.init_pid));
  return Ok();
}

Status WaitSessionEnd(const std::string& state_dir, const std::string& name, int init_pidfd) {
  constexpr int kTimeoutMs = 10000;
  struct pollfd p = {init_pidfd, POLLIN, 0};
  int n;
  while ((n = poll(&p, 1, kTimeoutMs)) < 0 && errno == EINTR) {
  }
  if (n < 0) return Error::Errno("poll the init of session " + name);
  if (n == 0) {
    return Error(ErrorCode::kFailed,
                 fmt::format("the init of session {} did not exit within {} s of the dump", name,
                             kTimeoutMs / 1000));
  }
  // A session's own init removes its cgroup and state file before it exits;
  // the init of a restored tree (the restore's PID namespace init) cannot,
  // so what it left is removed here rather than at the next `stasis ps`.
  std::string dir = session::ResolveStateDir(state_dir);
  session::StateDirLock lock = STASIS_TRY(session::StateDirLock::Acquire(dir));
  Result<session::SessionInfo> info = session::FindSession(dir, name);
  if (!info.ok()) {
    return info.error().code() == ErrorCode::kNotFound ? Ok() : std::move(info).error();
  }
  // Running: a new session took the name meanwhile.
  if (info->state != session::SessionState::kGone) return Ok();
  STASIS_TRY_CTX(session::CleanupSession(dir, *info),
                 "remove what the dumped session " + name + " left");
  return Ok();
}

std::function<Status(const restore::RestoreResult&)> SessionRegistrar(const std::string& state_dir,
                                                                      const std::string& name,
                                                                      const std::string& image_dir,
                                                                      std::string* registered) {
  return [=](const restore::RestoreResult& r) -> Status {
    std::string base = name.empty() ? r.session_name : name;
    if (base.empty()) return Ok();  // not a session image, and none asked for
    if (r.init_host_pid == 0) {
      return Error::Invalid("a session is restored into a new PID namespace; drop --pid-ns=host");
    }
    std::string dir = session::ResolveStateDir(state_dir);
    for (int n = 1; n <= 20; ++n) {
      session::RestoredSession s;
      s.name = n == 1 ? base : fmt::format("{}-{}", base, n);
      s.init_pid = r.init_host_pid;
      s.root_pid = r.host_pid;
      s.command = r.session_command;
      s.image_dir = image_dir;
      s.net = r.net;
      Result<session::SessionInfo> info = session::RegisterRestoredSession(dir, s);
      if (info.ok()) {
        *registered = s.name;
        return Ok();
      }
      // Only a name that is taken makes us try the next one.
      if (info.error().code() != ErrorCode::kInvalid ||
          info.error().message().find("already running") == std::string::npos) {
        return std::move(info).error();
      }
    }
    return Error::Invalid(fmt::format("session names {} to {}-20 are all taken", base, base));
  };
}

}  // namespace stasis::cli
