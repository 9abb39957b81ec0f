#include "kinds/thread.h"

#include <fmt/format.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cstring>

#include "kinds/signals.h"
#include "sys/kernel_abi.h"

namespace stasis::kinds::thread {
namespace {

struct RobustList {
  uint64_t head = 0;
  uint64_t len = 0;
};

Result<RobustList> GetRobustList(pid_t tid) {
  RobustList out;
  size_t len = 0;
  void* head = nullptr;
  if (syscall(SYS_get_robust_list, tid, &head, &len) < 0) {
    return Error::Errno(fmt::format("tid {}: get_robust_list", tid));
  }
  out.head = reinterpret_cast<uint64_t>(head);
  out.len = len;
  return out;
}

Status DumpAltstack(RemoteTask& task, image::Thread* out) {
  STASIS_TRY(task.Call("sigaltstack", SYS_sigaltstack, 0, task.scratch()));
  stack_t ss;
  STASIS_TRY(task.Get(task.scratch(), &ss, sizeof(ss)));
  out->set_altstack_sp(reinterpret_cast<uint64_t>(ss.ss_sp));
  out->set_altstack_size(ss.ss_size);
  out->set_altstack_flags(ss.ss_flags);
  return Ok();
}

Status DumpRseq(const sys::Tracee& tracee, image::Thread* out) {
  sys::abi::PtraceRseqConfiguration rseq = STASIS_TRY(tracee.GetRseq());
  out->set_rseq_abi(rseq.rseq_abi_pointer);
  out->set_rseq_len(rseq.rseq_abi_size);
  out->set_rseq_sig(rseq.signature);
  return Ok();
}

Status RestoreAltstack(RemoteTask& task, const image::Thread& thread) {
  stack_t ss = {};
  ss.ss_sp = reinterpret_cast<void*>(thread.altstack_sp());
  ss.ss_size = thread.altstack_size();
  // SS_ONSTACK only says the thread was running on it; it cannot be set.
  ss.ss_flags = thread.altstack_flags() & ~SS_ONSTACK;
  if (ss.ss_flags & SS_DISABLE) ss = {nullptr, SS_DISABLE, 0};
  uint64_t addr = STASIS_TRY(task.Put(&ss, sizeof(ss)));
  STASIS_TRY(task.Call("sigaltstack", SYS_sigaltstack, addr, 0));
  return Ok();
}

Status RestoreComm(RemoteTask& task, const image::Thread& thread) {
  char comm[16] = {};
  strncpy(comm, thread.comm().c_str(), sizeof(comm) - 1);
  uint64_t addr = STASIS_TRY(task.Put(comm, sizeof(comm)));
  STASIS_TRY(task.Call("prctl(PR_SET_NAME)", SYS_prctl, PR_SET_NAME, addr));
  return Ok();
}

// Re-executes the syscall at rip - 2 with the same arguments.
sys::Regs Reexecute(sys::Regs regs) {
  regs.rax = regs.orig_rax;
  regs.rip -= 2;
  return regs;
}

sys::Regs ReturnEintr(sys::Regs regs) {
  regs.rax = static_cast<uint64_t>(-EINTR);
  return regs;
}

// restart_block lives in the kernel and cannot be dumped.
sys::Regs ResumeRestartBlock(sys::Regs regs) {
  long nr = static_cast<long>(regs.orig_rax);
  if (nr == SYS_clock_nanosleep || nr == SYS_nanosleep) {
    // A relative sleep: the kernel wrote the time left to *rem, if the
    // caller gave one (r10 / rsi); sleep that long, from the same buffer.
    // Without rem, sleep the full request again: nanosleep may sleep longer
    // than asked, never shorter, and usleep() callers rarely expect EINTR.
    uint64_t rem = nr == SYS_clock_nanosleep ? regs.r10 : regs.rsi;
    if (rem != 0) (nr == SYS_clock_nanosleep ? regs.rdx : regs.rdi) = rem;
    return Reexecute(regs);
  }
  if (nr == SYS_futex && (regs.rsi & FUTEX_CMD_MASK) == FUTEX_WAIT_BITSET) {
    return Reexecute(regs);  // its timeout is absolute: same arguments, same deadline
  }
  // poll, select, relative futex waits: they report EINTR, as after a
  // signal handler, and their callers retry.
  return ReturnEintr(regs);
}

}  // namespace

sys::Regs ResumeRegs(const sys::Regs& dumped) {
  sys::Regs regs = dumped;
  if (static_cast<long>(regs.orig_rax) < 0) return regs;  // not in a syscall
  switch (-static_cast<long>(regs.rax)) {
    case sys::abi::kErestartSys:
    case sys::abi::kErestartNoIntr:
    case sys::abi::kErestartNoHand:
      regs = Reexecute(regs);
      break;
    case sys::abi::kErestartRestartBlock:
      regs = ResumeRestartBlock(regs);
      break;
    default:
      break;  // the syscall had finished; rax is its result
  }
  // The restored task is not in a syscall: keep the kernel's restart logic off.
  regs.orig_rax = ~0ull;
  return regs;
}

Status Dump(const sys::Tracee& tracee, RemoteTask& task, const sys::Regs& regs, uint64_t blocked,
            pid_t host_tid, image::Thread* out) {
  out->set_gpregs(std::string(reinterpret_cast<const char*>(&regs), sizeof(regs)));
  std::vector<uint8_t> xstate = STASIS_TRY(tracee.GetXstate());
  out->set_xstate(std::string(xstate.begin(), xstate.end()));
  out->set_blocked(blocked);
  for (std::string& info : STASIS_TRY(tracee.PeekSiginfo(/*shared=*/false))) {
    out->add_pending(std::move(info));
  }
  STASIS_TRY(DumpAltstack(task, out));
  STASIS_TRY(DumpRseq(tracee, out));
  RobustList robust = STASIS_TRY(GetRobustList(host_tid));
  out->set_robust_list(robust.head);
  out->set_robust_list_len(robust.len);
  STASIS_TRY(task.Call("prctl(PR_GET_TID_ADDRESS)", SYS_prctl, PR_GET_TID_ADDRESS, task.scratch()));
  uint64_t tid_address = 0;
  STASIS_TRY(task.Get(task.scratch(), &tid_address, sizeof(tid_address)));
  out->set_clear_child_tid(tid_address);
  std::string comm =
      STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/task/{}/comm", task.pid(), host_tid)));
  while (!comm.empty() && comm.back() == '\n') comm.pop_back();
  out->set_comm(comm);
  return Ok();
}

Status Restore(RemoteTask& task, int tgid, const image::Thread& thread) {
  STASIS_TRY(RestoreAltstack(task, thread));
  if (thread.robust_list() != 0) {
    STASIS_TRY(task.Call("set_robust_list", SYS_set_robust_list, thread.robust_list(),
                         thread.robust_list_len()));
  }
  STASIS_TRY(task.Call("set_tid_address", SYS_set_tid_address, thread.clear_child_tid()));
  if (thread.rseq_abi() != 0) {
    STASIS_TRY(task.Call("rseq", sys::abi::kNrRseq, thread.rseq_abi(), thread.rseq_len(), 0,
                         thread.rseq_sig()));
  }
  STASIS_TRY(RestoreComm(task, thread));
  return signals::QueueSignals(task, tgid, thread.tid(), thread.pending());
}

Status RestoreRegisters(const sys::Tracee& tracee, const image::Thread& thread) {
  sys::Regs regs;
  if (thread.gpregs().size() != sizeof(regs)) {
    return Error::Corrupt(fmt::format("tid {}: registers of wrong size", thread.tid()));
  }
  memcpy(&regs, thread.gpregs().data(), sizeof(regs));
  STASIS_TRY(tracee.SetRegs(ResumeRegs(regs)));
  std::vector<uint8_t> xstate(thread.xstate().begin(), thread.xstate().end());
  STASIS_TRY_CTX(tracee.SetXstate(xstate), fmt::format("tid {}", thread.tid()));
  return tracee.SetSigmask(thread.blocked());
}

}  // namespace stasis::kinds::thread
