// The mm's own fields: code/data/brk/stack/arg/env boundaries, auxv and exe
// link (restored at once with PR_SET_MM_MAP, which needs no
// CAP_SYS_RESOURCE), and the personality, which shapes the mmap layout.
#pragma once

#include "kinds/process_kind.h"

namespace stasis::kinds::mm {

Status Dump(RemoteTask& task, const sys::proc::ProcStat& stat, image::Process* proc);
// Needs the address space in place: the kernel checks the addresses, and
// the old exe must no longer be mapped.
Status Restore(RemoteTask& task, const image::Process& proc);

// Its row in the registry (registry.cc).
extern const ProcessKind kKind;

}  // namespace stasis::kinds::mm
