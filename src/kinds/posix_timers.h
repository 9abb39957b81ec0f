// POSIX interval timers (timer_create): clock, notification (signal,
// sigev_value, target thread), time left and interval; each comes back with
// its own timer ID (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.15+; an older
// kernel refuses the restore). Not carried: an overrun count pending at the
// dump (the kernel offers no way to set it).
#pragma once

#include "kinds/process_kind.h"

namespace stasis::kinds::posix_timers {

Status Dump(RemoteTask& task, image::Process* proc);
// After the task's threads exist: a timer may target one of them.
Status Restore(RemoteTask& task, const image::Process& proc);

// Pure parser of /proc/PID/timers text; notify_tid stays a host TID.
Result<std::vector<image::PosixTimer>> ParseTimers(std::string_view text);

// Its row in the registry (registry.cc).
extern const ProcessKind kKind;

}  // namespace stasis::kinds::posix_timers
