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

Result<TreeTask> Freeze(pid_t pid, pid_t parent) {
  TreeTask task;
  task.host_pid = pid;
  task.parent_host_pid = parent;
  if (STASIS_TRY(StateOf(pid)) == 'Z') {
    task.zombie = true;
    return task;
  }
  STASIS_TRY(PrecheckTask(pid));
  task.threads = STASIS_TRY(SeizeThreads(pid));
  return task;
}

// Seizes children not yet in `tasks`; true if any was added.
Result<bool> AddNewChildren(std::vector<TreeTask>& tasks) {
  bool added = false;
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (tasks[i].zombie) continue;
    pid_t parent = tasks[i].host_pid;
    for (int child : STASIS_TRY(sys::proc::ListChildren(parent))) {
      if (Known(tasks, child)) continue;
      Result<TreeTask> t = Freeze(child, parent);
      // Reaped between the listing and now: it is no longer part of the tree.
      if (!t.ok() && t.error().code() == ErrorCode::kNotFound) continue;
      tasks.push_back(STASIS_TRY(std::move(t)));
      added = true;
    }
  }
  return added;
}

}  // namespace

Status PrecheckTree(pid_t root) {
  if (STASIS_TRY(StateOf(root)) == 'Z') {
    return Error::Unsupported(fmt::format("pid {} is a zombie", root));
  }
  return PrecheckTask(root);
}

Result<std::vector<TreeTask>> FreezeTree(pid_t root) {
  std::vector<TreeTask> tasks;
  tasks.push_back(STASIS_TRY(Freeze(root, 0)));
  while (STASIS_TRY(AddNewChildren(tasks))) {
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
