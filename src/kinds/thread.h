// Per-thread state: general registers (with fs/gs base), the full xsave
// area, blocked mask, thread-directed pending signals, sigaltstack, rseq
// registration, robust futex list, clear_child_tid and comm.
//
// A thread stopped inside a blocking syscall is restored so that the call
// goes on: restartable calls are re-executed. restart_block calls cannot
// carry their kernel state: a relative sleep restarts with the time left
// that the kernel wrote to *rem (or, without rem, its full request), a
// futex wait with an absolute deadline restarts as it was, and the rest
// (poll, select, relative futex waits) see EINTR, as after a signal handler.
#pragma once

#include "kinds/context.h"

namespace stasis::kinds::thread {

// Reads the thread's state. `regs` and `blocked` are what the thread had
// before any injection (the Injector saved them).
Status Dump(const sys::Tracee& tracee, RemoteTask& task, const sys::Regs& regs, uint64_t blocked,
            pid_t host_tid, image::Thread* out);

// Per-thread kernel state set from inside the task (all but registers).
Status Restore(RemoteTask& task, int tgid, const image::Thread& thread);

// Final registers, xstate and mask. Call after the last injected syscall.
Status RestoreRegisters(const sys::Tracee& tracee, const image::Thread& thread);

// The registers to resume with, for a thread dumped inside a syscall.
sys::Regs ResumeRegs(const sys::Regs& dumped);

}  // namespace stasis::kinds::thread
