// The process tree of a dump: the root and all its descendants, frozen.
//
// Every thread of every live process is seized; the walk repeats until no
// new process or thread appears (a stopped task cannot fork, so it ends).
// Zombies cannot be seized; they are recorded with their exit status only.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "sys/result.h"
#include "sys/tracee.h"

namespace stasis::checkpoint {

struct TreeTask {
  pid_t host_pid = 0;
  pid_t parent_host_pid = 0;  // 0 for the root
  bool zombie = false;
  std::vector<sys::Tracee> threads;  // leader first; empty for zombies
};

// Parents come before their children. `session_netns`: see PrecheckTree.
Result<std::vector<TreeTask>> FreezeTree(pid_t root, const std::string& session_netns = "");

// Refuses a task that cannot be dumped, before anything is touched. The
// tasks of an isolated session may live in its network namespace,
// `session_netns` (its /proc/PID/ns/net link); "" for none.
Status PrecheckTree(pid_t root, const std::string& session_netns = "");

// The exit status of a zombie (/proc/PID/stat exit_code, field 52).
Result<int> ZombieExitStatus(pid_t pid);

}  // namespace stasis::checkpoint
