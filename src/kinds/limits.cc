#include "kinds/limits.h"

#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>

namespace stasis::kinds::limits {
namespace {

constexpr int kNumLimits = RLIM_NLIMITS;
constexpr int kItimers[] = {ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF};

uint64_t Micros(const timeval& tv) { return tv.tv_sec * 1000000ull + tv.tv_usec; }
timeval FromMicros(uint64_t us) {
  return {static_cast<time_t>(us / 1000000), static_cast<suseconds_t>(us % 1000000)};
}

Result<rlimit> GetLimit(RemoteTask& task, int resource) {
  STASIS_TRY(task.Call("prlimit64", SYS_prlimit64, 0, resource, 0, task.scratch()));
  rlimit lim;
  STASIS_TRY(task.Get(task.scratch(), &lim, sizeof(lim)));
  return lim;
}

Status SetLimit(RemoteTask& task, const image::Rlimit& in) {
  rlimit want = {in.cur(), in.max()};
  rlimit now = STASIS_TRY(GetLimit(task, static_cast<int>(in.resource())));
  if (want.rlim_max > now.rlim_max) {
    if (task.log() != nullptr) {
      task.log()->Warn(
          fmt::format("rlimit {} hard limit {} is above this restorer's {} (raising it needs "
                      "CAP_SYS_RESOURCE); restoring {}",
                      in.resource(), want.rlim_max, now.rlim_max, now.rlim_max));
    }
    want.rlim_max = now.rlim_max;
    want.rlim_cur = std::min(want.rlim_cur, want.rlim_max);
  }
  uint64_t addr = STASIS_TRY(task.Put(&want, sizeof(want)));
  STASIS_TRY_CTX(task.Call("prlimit64", SYS_prlimit64, 0, in.resource(), addr, 0),
                 fmt::format("rlimit {}", in.resource()));
  return Ok();
}

}  // namespace

Status Dump(RemoteTask& task, image::Process* proc) {
  for (int res = 0; res < kNumLimits; ++res) {
    rlimit lim = STASIS_TRY(GetLimit(task, res));
    image::Rlimit* out = proc->add_rlimits();
    out->set_resource(res);
    out->set_cur(lim.rlim_cur);
    out->set_max(lim.rlim_max);
  }
  for (int which : kItimers) {
    STASIS_TRY(task.Call("getitimer", SYS_getitimer, which, task.scratch()));
    itimerval val;
    STASIS_TRY(task.Get(task.scratch(), &val, sizeof(val)));
    image::Itimer* out = proc->add_itimers();
    out->set_which(which);
    out->set_interval_us(Micros(val.it_interval));
    out->set_value_us(Micros(val.it_value));
  }
  return Ok();
}

Status Restore(RemoteTask& task, const image::Process& proc) {
  for (const image::Rlimit& lim : proc.rlimits()) STASIS_TRY(SetLimit(task, lim));
  for (const image::Itimer& timer : proc.itimers()) {
    if (timer.value_us() == 0) continue;  // disarmed, as in a new task
    itimerval val = {FromMicros(timer.interval_us()), FromMicros(timer.value_us())};
    uint64_t addr = STASIS_TRY(task.Put(&val, sizeof(val)));
    STASIS_TRY(task.Call("setitimer", SYS_setitimer, timer.which(), addr, 0));
  }
  return Ok();
}

namespace {

Status DumpRow(const ProcessDumpInput& in, image::Process* proc) { return Dump(*in.task, proc); }

}  // namespace

const ProcessKind kKind = {
    .name = "limits",
    .summary =
        "Resource limits and interval timers (setitimer); without CAP_SYS_RESOURCE a hard limit "
        "above the restorer's is lowered, with a warning",
    .dump_phase = DumpPhase::kInjected,
    .dump = DumpRow,
    .restore_phase = RestorePhase::kAttributes,
    .restore = Restore,
};

}  // namespace stasis::kinds::limits
