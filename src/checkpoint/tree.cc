#include "checkpoint/tree.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "checkpoint/task_dump.h"
#include "sys/proc.h"

namespace stasis::checkpoint {
namespace {

Result<char> StateOf(pid_t pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/stat", pid)));
  sys::proc::ProcStat stat = STASIS_TRY(sys::proc::ParseStat(text));
  return stat.state;
}

bool Known(const std::vector<TreeTask>& tasks, pid_t pid) {
  return std::any_of(tasks.begin(), tasks.end(),
                     [pid](const TreeTask& t) { return t.host_pid == pid; });
}

Result<TreeTask> Freeze(pid_t pid, pid_t parent, const std::string& session_netns) {
  TreeTask task;
  task.host_pid = pid;
  task.parent_host_pid = parent;
  if (STASIS_TRY(StateOf(pid)) == 'Z') {
    task.zombie = true;
    return task;
  }
  STASIS_TRY(PrecheckTask(pid, session_netns));
  task.threads = STASIS_TRY(sys::SeizeThreads(pid));
  return task;
}

// Seizes children not yet in `tasks`; true if any was added.
Result<bool> AddNewChildren(std::vector<TreeTask>& tasks, const std::string& session_netns) {
  bool added = false;
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (tasks[i].zombie) continue;
    pid_t parent = tasks[i].host_pid;
    for (int child : STASIS_TRY(sys::proc::ListChildren(parent))) {
      if (Known(tasks, child)) continue;
      Result<TreeTask> t = Freeze(child, parent, session_netns);
      // Reaped between the listing and now: it is no longer part of the tree.
      if (!t.ok() && t.error().code() == ErrorCode::kNotFound) continue;
      tasks.push_back(STASIS_TRY(std::move(t)));
      added = true;
    }
  }
  return added;
}

Result<sys::proc::ProcStatus> StatusOf(pid_t pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/status", pid)));
  return sys::proc::ParseStatus(text);
}

// A tree in a nested PID namespace is dumped by the PIDs it sees, and
// restored into a fresh namespace whose init is ours. That is faithful only
// when its namespace's init was ours too (a restored tree, a stasis run
// session); inside anyone else's namespace (a container) the init and its
// role would be lost.
Status CheckPidNamespace(pid_t root) {
  std::string own = STASIS_TRY(sys::proc::ReadLink("/proc/self/ns/pid"));
  std::string ns = STASIS_TRY(sys::proc::ReadLink(fmt::format("/proc/{}/ns/pid", root)));
  if (ns == own) return Ok();
  sys::proc::ProcStatus st = STASIS_TRY(StatusOf(root));
  if (!st.ns_pid.empty() && st.ns_pid.back() == 1) {
    return Error::Unsupported(fmt::format(
        "pid {} is the init of its PID namespace; dump its children (or its session) instead",
        root));
  }
  pid_t p = st.ppid;
  for (int depth = 0; p > 0 && depth < 4096; ++depth) {
    sys::proc::ProcStatus ps = STASIS_TRY(StatusOf(p));
    if (!ps.ns_pid.empty() && ps.ns_pid.back() == 1) {
      std::string exe = STASIS_TRY(sys::proc::ReadLink(fmt::format("/proc/{}/exe", p)));
      // stasis may have been upgraded (or rebuilt) since that init started.
      constexpr std::string_view kDeleted = " (deleted)";
      if (exe.ends_with(kDeleted)) exe.resize(exe.size() - kDeleted.size());
      std::string self = STASIS_TRY(sys::proc::ReadLink("/proc/self/exe"));
      if (exe == self || exe.ends_with("/stasis")) return Ok();
      return Error::Unsupported(fmt::format(
          "pid {} lives in a PID namespace that stasis did not create (its init is pid {}, {}); "
          "not supported yet",
          root, p, exe));
    }
    p = ps.ppid;
  }
  return Error::Unsupported(fmt::format("pid {}: cannot find the init of its PID namespace", root));
}

}  // namespace

Status PrecheckTree(pid_t root, const std::string& session_netns) {
  if (STASIS_TRY(StateOf(root)) == 'Z') {
    return Error::Unsupported(fmt::format("pid {} is a zombie", root));
  }
  STASIS_TRY(CheckPidNamespace(root));
  return PrecheckTask(root, session_netns);
}

Result<std::vector<TreeTask>> FreezeTree(pid_t root, const std::string& session_netns) {
  std::vector<TreeTask> tasks;
  tasks.push_back(STASIS_TRY(Freeze(root, 0, session_netns)));
  while (STASIS_TRY(AddNewChildren(tasks, session_netns))) {
  }
  return tasks;
}

Result<int> ZombieExitStatus(pid_t pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/stat", pid)));
  size_t end = text.find_last_not_of(" \n");
  size_t start = text.find_last_of(' ', end);
  if (end == std::string::npos || start == std::string::npos) {
    return Error::Invalid(fmt::format("pid {}: no exit_code in /proc/PID/stat", pid));
  }
  return std::atoi(text.c_str() + start + 1);
}

}  // namespace stasis::checkpoint
