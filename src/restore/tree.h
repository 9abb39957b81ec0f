// Creates the restored tree's processes before any of them is built, so
// that parentage, sessions and process groups are real:
//  - the root is a puppet from the Spawner; every other process is forked
//    from its parent puppet with an injected clone3 (set_tid = its PID), so
//    getppid() and wait() work as before;
//  - a session leader calls setsid() right after it is made, before its
//    children, which then inherit the session;
//  - process groups are joined with setpgid() once everyone exists; a group
//    whose leader had exited gets a short-lived helper with the leader's PID;
//  - zombies are forked like the others and exit with their recorded status.
// Supported session layouts: a process is its own session leader or is in
// its parent's session (the root may be in a session outside the tree).
#pragma once

#include <vector>

#include "process.pb.h"
#include "restore/spawn.h"
#include "sys/tracee.h"

namespace stasis::restore {

struct TreeProcess {
  const image::Process* proc = nullptr;
  pid_t host_pid = 0;
  int pidfd_slot = -1;  // where this puppet holds the restorer's pidfd
  std::vector<sys::Tracee> tasks;  // tasks[0] is the leader; threads appended by BuildTask
};

// Checks the image's tree before anything is created.
Status ValidateTree(const std::vector<image::Process>& procs);

// Creates every process (zombies already dead) and fills `out` as it goes,
// so a caller can kill and reap whatever exists if this fails.
Status CreateTree(Spawner& spawner, const std::vector<image::Process>& procs,
                  std::vector<TreeProcess>* out);

}  // namespace stasis::restore
