// The read side of sessions: names, metadata files, liveness and usage.
#include "session/session.h"

#include <dirent.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <nlohmann/json.hpp>

#include "session/json.h"
#include "sys/proc.h"

namespace stasis::session {
namespace {

// Is `info`'s init the process that started the session, and not a zombie
// or a stranger that got its PID?
bool InitAlive(const SessionInfo& info) {
  if (info.init_pid <= 0) return false;
  Result<std::string> stat = sys::proc::ReadFile(sys::proc::ProcPath(info.init_pid, "stat"));
  if (!stat.ok()) return false;
  Result<sys::proc::ProcStat> parsed = sys::proc::ParseStat(*stat);
  if (!parsed.ok() || parsed->state == 'Z' || parsed->state == 'X') return false;
  if (info.init_start_time == 0) return true;
  Result<uint64_t> start = ProcessStartTime(info.init_pid);
  return start.ok() && *start == info.init_start_time;
}

Result<SessionInfo> ReadSessionFile(const std::string& path) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(path));
  SessionInfo info = STASIS_TRY(SessionFromJson(text, path));
  info.state = InitAlive(info) ? SessionState::kRunning : SessionState::kGone;
  return info;
}

// VmRSS of /proc/PID/status in bytes; 0 for kernel threads, zombies and
// processes that went away meanwhile.
uint64_t ResidentBytes(pid_t pid) {
  Result<std::string> status = sys::proc::ReadFile(sys::proc::ProcPath(pid, "status"));
  if (!status.ok()) return 0;
  size_t at = status->find("\nVmRSS:");
  if (at == std::string::npos) return 0;
  return std::strtoull(status->c_str() + at + 7, nullptr, 10) * 1024;
}

}  // namespace

std::string ResolveStateDir(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv(kStateDirEnv);
  if (env != nullptr && env[0] != '\0') return env;
  return kDefaultStateDir;
}

std::string CgroupParent() {
  const char* env = std::getenv(kCgroupParentEnv);
  if (env != nullptr && env[0] != '\0') return env;
  return kDefaultCgroupParent;
}

Status ValidateName(std::string_view name) {
  auto allowed = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
  };
  if (name.empty() || name.size() > 64 || name[0] == '.' || name[0] == '-' ||
      !std::all_of(name.begin(), name.end(), allowed)) {
    return Error::Invalid(fmt::format(
        "bad session name '{}': use 1 to 64 of [A-Za-z0-9_.-], not starting with '.' or '-'",
        name));
  }
  return Ok();
}

std::string MetadataPath(const std::string& state_dir, const std::string& name) {
  return state_dir + "/" + name + ".json";
}

const char* StateName(SessionState state) {
  return state == SessionState::kRunning ? "running" : "gone";
}

std::vector<pid_t> ProcessTree(pid_t root) {
  std::vector<pid_t> out = {root};
  for (size_t i = 0; i < out.size(); ++i) {
    Result<std::vector<int>> children = sys::proc::ListChildren(out[i]);
    if (children.ok()) out.insert(out.end(), children->begin(), children->end());
  }
  std::sort(out.begin(), out.end());
  return out;
}

Result<uint64_t> ProcessStartTime(pid_t pid) {
  std::string stat = STASIS_TRY(sys::proc::ReadFile(sys::proc::ProcPath(pid, "stat")));
  // comm may hold anything, so count fields from its closing parenthesis:
  // field 3 (state) follows it, field 22 is 19 fields further.
  size_t pos = stat.rfind(')');
  if (pos == std::string::npos) return Error::Invalid(fmt::format("pid {}: bad stat", pid));
  const char* p = stat.c_str() + pos + 1;
  for (int field = 3; field < 22; ++field) {
    while (*p == ' ') ++p;
    while (*p != ' ' && *p != '\0') ++p;
  }
  char* end = nullptr;
  uint64_t start = std::strtoull(p, &end, 10);
  if (end == p) return Error::Invalid(fmt::format("pid {}: stat has no starttime", pid));
  return start;
}

Result<SessionInfo> FindSession(const std::string& state_dir, const std::string& name) {
  STASIS_TRY(ValidateName(name));
  Result<SessionInfo> info = ReadSessionFile(MetadataPath(state_dir, name));
  if (!info.ok() && info.error().code() == ErrorCode::kNotFound) {
    return Error::NotFound(fmt::format("no session named '{}' in {}", name, state_dir));
  }
  return info;
}

Result<std::vector<SessionInfo>> ListSessions(const std::string& state_dir, Logger& log) {
  std::vector<SessionInfo> sessions;
  DIR* dir = opendir(state_dir.c_str());
  if (dir == nullptr) {
    if (errno == ENOENT) return sessions;
    return Error::Errno("open state directory " + state_dir);
  }
  std::vector<std::string> names;
  while (struct dirent* entry = readdir(dir)) {
    std::string_view file = entry->d_name;
    if (!file.ends_with(".json")) continue;
    std::string name(file.substr(0, file.size() - 5));
    if (ValidateName(name).ok()) names.push_back(std::move(name));
  }
  closedir(dir);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    Result<SessionInfo> info = ReadSessionFile(MetadataPath(state_dir, name));
    if (info.ok()) {
      sessions.push_back(std::move(info).value());
    } else if (info.error().code() != ErrorCode::kNotFound) {  // not removed meanwhile
      log.Warn(fmt::format("session {}: {}", name, info.error().ToString()));
    }
  }
  return sessions;
}

Result<std::vector<pid_t>> SessionProcesses(const SessionInfo& info) {
  if (info.cgroup.empty()) {
    if (info.state == SessionState::kGone) return std::vector<pid_t>();
    return ProcessTree(info.init_pid);
  }
  Result<sys::Cgroup> cgroup = sys::Cgroup::Open(info.cgroup);
  if (!cgroup.ok()) {
    if (cgroup.error().code() == ErrorCode::kNotFound) return std::vector<pid_t>();
    return std::move(cgroup).error();
  }
  return cgroup->Processes();
}

Result<SessionUsage> MeasureSession(const SessionInfo& info) {
  SessionUsage usage;
  std::vector<pid_t> pids = STASIS_TRY(SessionProcesses(info));
  usage.processes = pids.size();
  if (!info.cgroup.empty()) {
    Result<sys::Cgroup> cgroup = sys::Cgroup::Open(info.cgroup);
    if (cgroup.ok()) {
      std::optional<uint64_t> current = STASIS_TRY(cgroup->MemoryCurrent());
      if (current) {
        usage.memory_bytes = *current;
        usage.memory_from_cgroup = true;
        return usage;
      }
    }
  }
  // Shared pages count once per process here: an upper bound.
  for (pid_t pid : pids) usage.memory_bytes += ResidentBytes(pid);
  return usage;
}

}  // namespace stasis::session
