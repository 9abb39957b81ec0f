// Resource limits and interval timers, read and set from inside the task:
// without CAP_SYS_RESOURCE even root cannot read another uid's limits from
// outside. A hard limit above the restorer's own cannot be set without
// CAP_SYS_RESOURCE; it is lowered to the restorer's, with a warning.
#pragma once

#include "kinds/process_kind.h"

namespace stasis::kinds::limits {

Status Dump(RemoteTask& task, image::Process* proc);
Status Restore(RemoteTask& task, const image::Process& proc);

// Its row in the registry (registry.cc).
extern const ProcessKind kKind;

}  // namespace stasis::kinds::limits
