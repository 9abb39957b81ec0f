// The row a per-process kind (signals, limits, credentials, ...) exports
// from its own file (`extern const ProcessKind kKind`), like an fd kind's
// FdKind. The dump (checkpoint/task_dump.cc) and the puppet restore
// (restore/puppet.cc) run the rows of each phase in table order
// (registry.cc) instead of calling kinds by name.
//
// Not rows: threads (per thread, each created by clone3 in the middle of
// the attributes phase, restore/puppet.cc) and the address space
// (kinds/memory*, being moved to src/mem/), whose steps are interleaved
// with page filling and forking.
#pragma once

#include <sys/types.h>

#include "kinds/context.h"

namespace stasis::kinds {

// When a row's dump runs.
enum class DumpPhase {
  // With system calls injected into the stopped leader (in.task is set),
  // after every thread's own state was read.
  kInjected,
  // From /proc only, after the VMAs are in the image (the vdso block is
  // found among them); in.task is null: the scratch area is gone.
  kAfterVmas,
};

// When a row's restore runs, in the order of the puppet's steps.
enum class RestorePhase {
  // Inside the memory phase, at a fixed point of it (TaskBuild::MapMemory and FinishMemory:
  // the vdso block is moved before the VMAs are mapped and only when it
  // moved; mm once they are final), which calls them itself.
  kMemory,
  // Once the fds are installed, before the threads are made: state every
  // thread then shares (cwd, rlimits, dispositions).
  kAttributes,
  // Once every thread exists (a POSIX timer may target a thread by TID).
  kAfterThreads,
  // Last, in every thread (raw setresuid and capset change one thread
  // only), after fds are pulled and threads made, which need privileges.
  kCredentials,
};

// What a row's dump is given.
struct ProcessDumpInput {
  pid_t pid = 0;                        // host pid
  RemoteTask* task = nullptr;           // DumpPhase::kInjected only
  const sys::Tracee* leader = nullptr;  // the seized thread group leader
  const sys::proc::ProcStatus* status = nullptr;
  const sys::proc::ProcStat* stat = nullptr;
  image::Manifest* manifest = nullptr;  // for what is per image (the vdso's layout)
};

struct ProcessKind {
  const char* name;
  // One line for `stasis kinds`, docs/kinds.md and the README: what is carried.
  const char* summary;
  DumpPhase dump_phase;
  Status (*dump)(const ProcessDumpInput& in, image::Process* proc);
  RestorePhase restore_phase;
  Status (*restore)(RemoteTask& task, const image::Process& proc);
};

}  // namespace stasis::kinds
