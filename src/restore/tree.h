// Builds the restored tree so that parentage, sessions, process groups and
// copy-on-write sharing are real:
//  - the root is a puppet from the Spawner; every other process is forked
//    from its parent (clone3 with set_tid = its PID) once the parent's
//    memory is restored, so it inherits the pages it still shared with the
//    parent at dump time, and getppid() and wait() work as before;
//  - a session leader calls setsid() right after it is made, before its
//    children, which then inherit the session;
//  - process groups are joined with setpgid() once everyone exists; a group
//    whose leader had exited gets a short-lived helper with the leader's PID;
//  - zombies are forked like the others and exit with their recorded status.
// Supported session layouts: a process is its own session leader or is in
// its parent's session (the root may be in a session outside the tree).
#pragma once

#include <memory>
#include <vector>

#include "process.pb.h"
#include "restore/puppet.h"
#include "restore/spawn.h"
#include "sys/tracee.h"

namespace stasis::restore {

struct TreeProcess {
  const image::Process* proc = nullptr;
  pid_t host_pid = 0;
  int pidfd_slot = -1;                  // where it holds the restorer's pidfd
  std::unique_ptr<sys::Tracee> leader;  // null once a zombie has exited
  std::vector<sys::Tracee> threads;
  std::unique_ptr<TaskBuild> build;  // live processes, from phase 1 on
  ForkOrigin origin = {};            // forked ones: the parent's image and scratch
};

// Checks the image's tree before anything is created: parents before
// children (depth first), a supported session layout.
Status ValidateTree(const std::vector<image::Process>& procs);

// The image's Files: what the kinds' after_setsid hooks need.
struct TreeFiles {
  const LocalFiles* local;
  const std::map<uint64_t, const image::File*>* image;
};

// Creates the root puppet (out must have room for every process: entries
// are referred to by address).
Status CreateRoot(Spawner& spawner, const std::vector<image::Process>& procs,
                  const TreeFiles& files, std::vector<TreeProcess>* out);
// Forks `child` from `parent` (in phase 1 or later) and returns its index.
Result<size_t> ForkInto(TreeProcess& parent, const image::Process& child, const TreeFiles& files,
                        std::vector<TreeProcess>* out);
// After every process exists and has its attributes: groups, then zombies.
// job_group_outside (restore --shell-job): the root's group is the job's,
// which the tree joins in the restorer's group (inherited through the init)
// instead of making it again, so the shell's job control reaches it.
Status MakeGroups(const std::vector<image::Process>& procs, std::vector<TreeProcess>* tree,
                  bool job_group_outside = false);
Status EndZombies(std::vector<TreeProcess>* tree);

}  // namespace stasis::restore
