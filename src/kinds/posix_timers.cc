#include "kinds/posix_timers.h"

#include <fmt/format.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>

#include <charconv>
#include <cstdlib>

namespace stasis::kinds::posix_timers {
namespace {

constexpr int kPrTimerCreateRestoreIds = 77;  // linux/prctl.h, 6.15+
constexpr int kRestoreIdsOff = 0;
constexpr int kRestoreIdsOn = 1;

// The kernel's struct sigevent (64 bytes); the thread id sits in the union.
struct KernelSigevent {
  uint64_t value;
  int32_t signo;
  int32_t notify;
  int32_t tid;
  int32_t pad[11];
};
static_assert(sizeof(KernelSigevent) == 64);

uint64_t Nanos(const timespec& t) { return t.tv_sec * 1000000000ull + t.tv_nsec; }
timespec FromNanos(uint64_t ns) {
  return {static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
}

Result<int> ParseNotify(std::string_view v, int32_t* tid) {
  // "signal/pid.123", "thread/pid.123", "none/pid.123"
  size_t dot = v.rfind('.');
  if (dot != std::string_view::npos) *tid = std::atoi(std::string(v.substr(dot + 1)).c_str());
  if (v.starts_with("signal/")) return SIGEV_SIGNAL;
  if (v.starts_with("thread/")) return SIGEV_THREAD_ID;
  if (v.starts_with("none/")) return SIGEV_NONE;
  return Error::Invalid(fmt::format("timers: unknown notify '{}'", v));
}

// The task's own id for a host TID, from its NSpid line.
Result<int32_t> OwnTid(pid_t pid, int32_t host_tid) {
  std::string text =
      STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/task/{}/status", pid, host_tid)));
  sys::proc::ProcStatus st = STASIS_TRY(sys::proc::ParseStatus(text));
  return st.ns_pid.empty() ? host_tid : st.ns_pid.back();
}

}  // namespace

Result<std::vector<image::PosixTimer>> ParseTimers(std::string_view text) {
  std::vector<image::PosixTimer> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    size_t colon = line.find(": ");
    if (colon == std::string_view::npos) continue;
    std::string_view key = line.substr(0, colon), v = line.substr(colon + 2);
    if (key == "ID") {
      out.emplace_back().set_id(std::atoi(std::string(v).c_str()));
      continue;
    }
    if (out.empty()) return Error::Invalid("timers: a field before the first ID");
    image::PosixTimer& t = out.back();
    if (key == "signal") {
      size_t slash = v.find('/');
      t.set_signo(std::atoi(std::string(v.substr(0, slash)).c_str()));
      if (slash != std::string_view::npos) {
        t.set_sigval(std::strtoull(std::string(v.substr(slash + 1)).c_str(), nullptr, 16));
      }
    } else if (key == "notify") {
      int32_t tid = 0;
      t.set_notify(STASIS_TRY(ParseNotify(v, &tid)));
      t.set_notify_tid(tid);
    } else if (key == "ClockID") {
      t.set_clock(std::atoi(std::string(v).c_str()));
    }
  }
  return out;
}

Status Dump(RemoteTask& task, image::Process* proc) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/timers", task.pid())));
  for (image::PosixTimer& t : STASIS_TRY(ParseTimers(text))) {
    STASIS_TRY(task.Call("timer_gettime", SYS_timer_gettime, t.id(), task.scratch()));
    itimerspec its;
    STASIS_TRY(task.Get(task.scratch(), &its, sizeof(its)));
    t.set_value_ns(Nanos(its.it_value));
    t.set_interval_ns(Nanos(its.it_interval));
    if (t.notify() == SIGEV_THREAD_ID)
      t.set_notify_tid(STASIS_TRY(OwnTid(task.pid(), t.notify_tid())));
    *proc->add_posix_timers() = std::move(t);
  }
  return Ok();
}

Status Restore(RemoteTask& task, const image::Process& proc) {
  if (proc.posix_timers_size() == 0) return Ok();
  STASIS_TRY_CTX(task.Call("prctl(PR_TIMER_CREATE_RESTORE_IDS)", SYS_prctl,
                           kPrTimerCreateRestoreIds, kRestoreIdsOn),
                 "restoring POSIX timer ids needs Linux 6.15+");
  for (const image::PosixTimer& t : proc.posix_timers()) {
    std::string what = fmt::format("pid {} timer {}", proc.pid(), t.id());
    KernelSigevent sev = {};
    sev.value = t.sigval();
    sev.signo = t.signo();
    sev.notify = t.notify();
    sev.tid = t.notify_tid();
    uint64_t sev_addr = STASIS_TRY(task.Put(&sev, sizeof(sev), 0));
    int32_t id = t.id();
    uint64_t id_addr = STASIS_TRY(task.Put(&id, sizeof(id), 128));
    STASIS_TRY_CTX(task.Call("timer_create", SYS_timer_create, t.clock(), sev_addr, id_addr), what);
    int32_t got = -1;
    STASIS_TRY(task.Get(id_addr, &got, sizeof(got)));
    if (got != t.id()) {
      return Error(ErrorCode::kFailed, fmt::format("{}: the kernel gave id {}", what, got));
    }
    if (t.value_ns() == 0) continue;
    itimerspec its = {FromNanos(t.interval_ns()), FromNanos(t.value_ns())};
    uint64_t its_addr = STASIS_TRY(task.Put(&its, sizeof(its), 256));
    STASIS_TRY_CTX(task.Call("timer_settime", SYS_timer_settime, t.id(), 0, its_addr, 0), what);
  }
  STASIS_TRY(task.Call("prctl(PR_TIMER_CREATE_RESTORE_IDS)", SYS_prctl, kPrTimerCreateRestoreIds,
                       kRestoreIdsOff));
  return Ok();
}

namespace {

Status DumpRow(const ProcessDumpInput& in, image::Process* proc) { return Dump(*in.task, proc); }

}  // namespace

const ProcessKind kKind = {
    .name = "posix_timers",
    .summary = "POSIX timers (timer_create): ids, clocks, targets, time left and interval",
    .dump_phase = DumpPhase::kInjected,
    .dump = DumpRow,
    .restore_phase = RestorePhase::kAfterThreads,
    .restore = Restore,
};

}  // namespace stasis::kinds::posix_timers
