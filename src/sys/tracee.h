// Tracee: one task seized with PTRACE_SEIZE and held in a ptrace stop.
// Injector: runs system calls inside a stopped tracee (no parasite code).
//
// Minimum kernel 5.x (PTRACE_GET_RSEQ_CONFIGURATION needs 5.13). Needs
// CAP_SYS_PTRACE over the task. A Tracee detaches when destroyed; it never
// restores registers by itself — whoever changed them (the Injector) does.
#pragma once

#include <sys/types.h>
#include <sys/user.h>

#include <cstdint>
#include <string>
#include <vector>

#include "sys/kernel_abi.h"
#include "sys/result.h"

namespace stasis::sys {

using Regs = struct user_regs_struct;

class Tracee {
 public:
  // Seizes tid and waits until it sits in a ptrace stop. A signal that the
  // task was already delivering when interrupted is delivered (as it would
  // have been) before the stop is taken. kill_on_exit sets PTRACE_O_EXITKILL:
  // used for restore puppets, so a crashed restorer leaves nothing behind.
  static Result<Tracee> Seize(pid_t tid, bool kill_on_exit = false);

  Tracee(Tracee&& other) noexcept;
  Tracee& operator=(Tracee&& other) noexcept;
  Tracee(const Tracee&) = delete;
  Tracee& operator=(const Tracee&) = delete;
  ~Tracee();

  pid_t tid() const { return tid_; }

  Result<Regs> GetRegs() const;
  Status SetRegs(const Regs& regs) const;
  Result<std::vector<uint8_t>> GetXstate() const;
  Status SetXstate(const std::vector<uint8_t>& xstate) const;
  Result<uint64_t> GetSigmask() const;
  Status SetSigmask(uint64_t mask) const;
  // Pending signals of the thread queue (shared=false) or the process queue,
  // as raw 128-byte siginfo records, without dequeuing them.
  Result<std::vector<std::string>> PeekSiginfo(bool shared) const;
  Result<abi::PtraceRseqConfiguration> GetRseq() const;

  // Runs the syscall instruction at the task's rip to its exit stop
  // (PTRACE_SYSCALL: entry stop, then exit stop). A clone/fork event on the
  // way (an injected clone3) is passed through; its new task's id (as this
  // host sees it) is returned, else 0. Other stops are errors.
  Result<pid_t> RunSyscall() const;
  // Takes over a task already attached to us: one auto-attached by
  // PTRACE_O_TRACECLONE. Waits for its first stop.
  static Result<Tracee> Adopt(pid_t tid);
  // PTRACE_SETOPTIONS, e.g. PTRACE_O_EXITKILL | PTRACE_O_TRACECLONE.
  Status SetOptions(long options) const;
  // Lets the task run again. Registers are whatever they are now.
  Status Detach();

 private:
  explicit Tracee(pid_t tid) : tid_(tid) {}
  pid_t tid_ = -1;
};

// Runs system calls in a stopped tracee by pointing its registers at a
// `syscall` instruction and single-stepping over it (~15 us each here).
// Signals are blocked in the task while it runs our calls, so none can be
// delivered in between; Finish() puts back the registers and mask it found.
class Injector {
 public:
  // syscall_ip must point at a `syscall` (0f 05) instruction in the tracee.
  static Result<Injector> Create(Tracee& tracee, uint64_t syscall_ip);
  // The task created by the last injected call, if it was a clone.
  pid_t last_child() const { return last_child_; }

  Injector(Injector&&) noexcept;
  Injector& operator=(Injector&&) = delete;
  Injector(const Injector&) = delete;
  ~Injector();

  // Raw result: a value in [-4095, -1] is -errno.
  Result<long> Raw(long nr, uint64_t a1 = 0, uint64_t a2 = 0, uint64_t a3 = 0, uint64_t a4 = 0,
                   uint64_t a5 = 0, uint64_t a6 = 0);
  // Like Raw, but turns -errno into an Error that names the call.
  Result<long> Call(const char* name, long nr, uint64_t a1 = 0, uint64_t a2 = 0, uint64_t a3 = 0,
                    uint64_t a4 = 0, uint64_t a5 = 0, uint64_t a6 = 0);

  void set_syscall_ip(uint64_t ip) { syscall_ip_ = ip; }
  const Regs& saved_regs() const { return saved_; }
  uint64_t saved_sigmask() const { return saved_mask_; }
  // Restores the registers and signal mask found at Create().
  Status Finish();
  // Forget the saved state: the caller sets final registers itself.
  void Abandon() { finished_ = true; }

 private:
  Injector(Tracee& tracee, uint64_t ip, const Regs& saved, uint64_t mask)
      : tracee_(&tracee), syscall_ip_(ip), saved_(saved), saved_mask_(mask) {}
  Tracee* tracee_;
  uint64_t syscall_ip_;
  Regs saved_;
  uint64_t saved_mask_;
  bool finished_ = false;
  pid_t last_child_ = 0;
};

// Finds a `syscall` instruction inside [start, end) of pid's memory.
Result<uint64_t> FindSyscallInsn(pid_t pid, uint64_t start, uint64_t end);

// process_vm_readv / process_vm_writev of one range, all or error.
// Seizes every thread of pid, re-scanning until no new thread appears.
// The leader comes first.
Result<std::vector<Tracee>> SeizeThreads(pid_t pid);

Status ReadMemory(pid_t pid, uint64_t addr, void* buf, size_t len);
Status WriteMemory(pid_t pid, uint64_t addr, const void* buf, size_t len);

}  // namespace stasis::sys
