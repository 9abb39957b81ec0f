// The task's place in the file system: cwd, root and umask. Restore opens
// the directories here and moves the task into them with fchdir/chroot.
#pragma once

#include "kinds/process_kind.h"

namespace stasis::kinds::fs_context {

Status Dump(pid_t pid, const sys::proc::ProcStatus& status, image::Process* proc);
Status Restore(RemoteTask& task, const image::Process& proc);

// Its row in the registry (registry.cc).
extern const ProcessKind kKind;

}  // namespace stasis::kinds::fs_context
