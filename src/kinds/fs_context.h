// The task's place in the file system: cwd, root and umask. Restore opens
// the directories here and moves the task into them with fchdir/chroot.
#pragma once

#include "kinds/context.h"

namespace stasis::kinds::fs_context {

Status Dump(pid_t pid, const sys::proc::ProcStatus& status, image::Process* proc);
Status Restore(RemoteTask& task, const image::Process& proc);

}  // namespace stasis::kinds::fs_context
