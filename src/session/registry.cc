// The write side of sessions: the state-directory lock, claiming a name,
// metadata files, cleaning up after gone sessions, registering restores.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <ctime>
#include <filesystem>

#include "session/json.h"
#include "session/session.h"

namespace stasis::session {
Status RemoveSessionMetadata(const std::string& state_dir, const SessionInfo& info) {
  Result<SessionInfo> current = FindSession(state_dir, info.name);
  if (!current.ok()) {
    return current.error().code() == ErrorCode::kNotFound ? Ok() : std::move(current).error();
  }
  if (current->init_pid != info.init_pid || current->init_start_time != info.init_start_time) {
    return Ok();
  }
  std::string path = MetadataPath(state_dir, info.name);
  if (unlink(path.c_str()) < 0 && errno != ENOENT) return Error::Errno("unlink " + path);
  return Ok();
}

Result<StateDirLock> StateDirLock::Acquire(const std::string& state_dir) {
  std::error_code ec;
  std::filesystem::create_directories(state_dir, ec);
  if (ec) return Error::FromErrno("create state directory " + state_dir, ec.value());
  std::string path = state_dir + "/.lock";
  sys::UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) return Error::Errno("open " + path);
  int r;
  do {
    r = flock(fd.get(), LOCK_EX);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return Error::Errno("flock " + path);
  return StateDirLock(std::move(fd));
}

Status ClaimSessionName(const std::string& state_dir, const std::string& name) {
  STASIS_TRY(ValidateName(name));
  Result<SessionInfo> existing = FindSession(state_dir, name);
  if (!existing.ok()) {
    if (existing.error().code() == ErrorCode::kNotFound) return Ok();
    return std::move(existing).error().Context("session name " + name);
  }
  if (existing->state == SessionState::kRunning) {
    return Error::Invalid(
        fmt::format("session {} is already running (init pid {})", name, existing->init_pid));
  }
  return CleanupSession(state_dir, *existing);
}

Result<sys::Cgroup> ClaimSessionCgroup(const std::string& state_dir, const std::string& name) {
  STASIS_TRY(ClaimSessionName(state_dir, name));
  std::string relative = CgroupParent() + "/" + name;
  sys::Cgroup cgroup = STASIS_TRY(sys::Cgroup::Create(relative));
  std::vector<pid_t> pids = STASIS_TRY(cgroup.Processes());
  if (!pids.empty()) {
    return Error::Invalid(
        fmt::format("cgroup {} already holds {} process(es) (pid {}), "
                    "not started by a session stasis knows",
                    cgroup.path(), pids.size(), pids.front()));
  }
  // An empty leftover may still be frozen or limited: start from a new one.
  STASIS_TRY(cgroup.Remove());
  return sys::Cgroup::Create(relative);
}

Status WriteSessionMetadata(const std::string& state_dir, const SessionInfo& info) {
  STASIS_TRY(ValidateName(info.name));
  std::string path = MetadataPath(state_dir, info.name);
  std::string tmp = fmt::format("{}/.{}.json.tmp{}", state_dir, info.name, getpid());
  sys::UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return Error::Errno("create " + tmp);
  std::string text = SessionToJson(info);
  ssize_t n = write(fd.get(), text.data(), text.size());
  if (n != static_cast<ssize_t>(text.size())) {
    Error error = Error::Errno("write " + tmp);
    unlink(tmp.c_str());
    return error;
  }
  fd.reset();
  if (rename(tmp.c_str(), path.c_str()) < 0) {
    Error error = Error::Errno("rename to " + path);
    unlink(tmp.c_str());
    return error;
  }
  return Ok();
}

Status CleanupSession(const std::string& state_dir, const SessionInfo& info) {
  if (info.state == SessionState::kRunning) {
    return Error::Invalid(fmt::format("session {} is still running", info.name));
  }
  if (!info.cgroup.empty()) {
    Result<sys::Cgroup> cgroup = sys::Cgroup::Open(info.cgroup);
    if (cgroup.ok()) {
      // Whatever is left belongs to the dead session: PID 1 is gone, so its
      // namespace is already being torn down by the kernel.
      STASIS_TRY_CTX(cgroup->KillAll(), "session " + info.name);
      STASIS_TRY_CTX(cgroup->Remove(), "session " + info.name);
    } else if (cgroup.error().code() != ErrorCode::kNotFound) {
      return std::move(cgroup).error();
    }
  }
  return RemoveSessionMetadata(state_dir, info);
}

Result<SessionInfo> RegisterRestoredSession(const std::string& state_dir,
                                            const RestoredSession& restored) {
  STASIS_TRY(ValidateName(restored.name));
  StateDirLock lock = STASIS_TRY(StateDirLock::Acquire(state_dir));
  SessionInfo info;
  info.name = restored.name;
  info.init_pid = restored.init_pid;
  info.init_start_time = STASIS_TRY_CTX(ProcessStartTime(restored.init_pid), "restored init");
  info.root_pid = restored.root_pid;
  info.command = restored.command;
  info.created_unix = time(nullptr);
  info.origin = "restore";
  info.image = restored.image_dir;
  info.net = restored.net;
  if (sys::FindCgroup2Mount().ok()) {
    sys::Cgroup cgroup = STASIS_TRY(ClaimSessionCgroup(state_dir, restored.name));
    for (pid_t pid : ProcessTree(restored.init_pid)) {
      Status moved = cgroup.AddProcess(pid);
      // A task that exited since the walk is not an error; anything else is.
      if (!moved.ok() && moved.error().errnum() != ESRCH) {
        return std::move(moved).error().Context("session " + restored.name);
      }
    }
    info.cgroup = cgroup.path();
  } else {
    STASIS_TRY(ClaimSessionName(state_dir, restored.name));
  }
  STASIS_TRY(WriteSessionMetadata(state_dir, info));
  return info;
}

}  // namespace stasis::session
