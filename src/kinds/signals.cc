#include "kinds/signals.h"

#include <fmt/format.h>
#include <signal.h>
#include <sys/syscall.h>

#include "sys/kernel_abi.h"

namespace stasis::kinds::signals {
namespace {

constexpr int kMaxSignal = 64;
constexpr size_t kSigsetSize = 8;
constexpr size_t kSiginfoSize = 128;

bool Settable(int sig) { return sig != SIGKILL && sig != SIGSTOP; }

}  // namespace

Status Dump(RemoteTask& task, const sys::Tracee& tracee, image::Process* proc) {
  for (int sig = 1; sig <= kMaxSignal; ++sig) {
    sys::abi::KernelSigaction act = {};
    if (Settable(sig)) {
      STASIS_TRY(task.Call("rt_sigaction", SYS_rt_sigaction, sig, 0, task.scratch(), kSigsetSize));
      STASIS_TRY(task.Get(task.scratch(), &act, sizeof(act)));
    }
    image::SigAction* out = proc->add_sigactions();
    out->set_handler(act.handler);
    out->set_flags(act.flags);
    out->set_restorer(act.restorer);
    out->set_mask(act.mask);
  }
  for (std::string& info : STASIS_TRY(tracee.PeekSiginfo(/*shared=*/true))) {
    proc->add_shared_pending(std::move(info));
  }
  return Ok();
}

Status Restore(RemoteTask& task, const image::Process& proc) {
  if (proc.sigactions_size() != kMaxSignal) {
    return Error::Corrupt(fmt::format("pid {}: {} sigactions in image, want {}", proc.pid(),
                                      proc.sigactions_size(), kMaxSignal));
  }
  for (int sig = 1; sig <= kMaxSignal; ++sig) {
    if (!Settable(sig)) continue;
    const image::SigAction& in = proc.sigactions(sig - 1);
    sys::abi::KernelSigaction act = {in.handler(), in.flags(), in.restorer(), in.mask()};
    uint64_t addr = STASIS_TRY(task.Put(&act, sizeof(act)));
    STASIS_TRY_CTX(task.Call("rt_sigaction", SYS_rt_sigaction, sig, addr, 0, kSigsetSize),
                   fmt::format("signal {}", sig));
  }
  return QueueSignals(task, proc.pid(), 0, proc.shared_pending());
}

Status QueueSignals(RemoteTask& task, int tgid, int tid,
                    const google::protobuf::RepeatedPtrField<std::string>& infos) {
  for (const std::string& info : infos) {
    if (info.size() != kSiginfoSize) return Error::Corrupt("pending siginfo of wrong size");
    siginfo_t si;
    memcpy(&si, info.data(), sizeof(si));
    uint64_t addr = STASIS_TRY(task.Put(&si, sizeof(si)));
    // The task queues to itself, so any si_code is allowed (kernel/signal.c).
    if (tid == 0) {
      STASIS_TRY(task.Call("rt_sigqueueinfo", SYS_rt_sigqueueinfo, tgid, si.si_signo, addr));
    } else {
      STASIS_TRY(
          task.Call("rt_tgsigqueueinfo", SYS_rt_tgsigqueueinfo, tgid, tid, si.si_signo, addr));
    }
  }
  return Ok();
}

namespace {

Status DumpRow(const ProcessDumpInput& in, image::Process* proc) {
  return Dump(*in.task, *in.leader, proc);
}

}  // namespace

const ProcessKind kKind = {
    .name = "signals",
    .summary = "Signal dispositions and the process-directed pending queue with full siginfo",
    .dump_phase = DumpPhase::kInjected,
    .dump = DumpRow,
    .restore_phase = RestorePhase::kAttributes,
    .restore = Restore,
};

}  // namespace stasis::kinds::signals
