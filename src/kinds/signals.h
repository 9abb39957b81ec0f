// Process-wide signal state: the disposition of every signal (handler,
// flags, restorer, mask; read and set with rt_sigaction inside the task) and
// the process-directed pending queue with full siginfo. Per-thread masks and
// queues live in thread.h.
#pragma once

#include "kinds/process_kind.h"

namespace stasis::kinds::signals {

Status Dump(RemoteTask& task, const sys::Tracee& tracee, image::Process* proc);
// Needs every signal blocked in the task (the Injector does that), so the
// queued signals stay pending until the final mask is set.
Status Restore(RemoteTask& task, const image::Process& proc);

// Queues raw 128-byte siginfo records on the process (tid == 0) or a thread.
Status QueueSignals(RemoteTask& task, int tgid, int tid,
                    const google::protobuf::RepeatedPtrField<std::string>& infos);

// Its row in the registry (registry.cc).
extern const ProcessKind kKind;

}  // namespace stasis::kinds::signals
