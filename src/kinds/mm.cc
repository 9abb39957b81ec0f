#include "kinds/mm.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/personality.h>
#include <sys/syscall.h>

#include <cstdlib>

#include "sys/kernel_abi.h"

namespace stasis::kinds::mm {
namespace {

Result<uint32_t> ReadPersonality(pid_t pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/personality", pid)));
  return static_cast<uint32_t>(std::strtoul(text.c_str(), nullptr, 16));
}

}  // namespace

Status Dump(RemoteTask& task, const sys::proc::ProcStat& stat, image::Process* proc) {
  image::MmState* mm = proc->mutable_mm();
  mm->set_start_code(stat.start_code);
  mm->set_end_code(stat.end_code);
  mm->set_start_data(stat.start_data);
  mm->set_end_data(stat.end_data);
  mm->set_start_stack(stat.start_stack);
  mm->set_start_brk(stat.start_brk);
  mm->set_arg_start(stat.arg_start);
  mm->set_arg_end(stat.arg_end);
  mm->set_env_start(stat.env_start);
  mm->set_env_end(stat.env_end);
  // The current break is in no /proc file; brk(0) answers it.
  mm->set_brk(static_cast<uint64_t>(STASIS_TRY(task.Call("brk", SYS_brk, 0))));
  mm->set_auxv(STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/auxv", task.pid()))));
  std::string exe = STASIS_TRY(sys::proc::ReadLink(fmt::format("/proc/{}/exe", task.pid())));
  if (exe.ends_with(" (deleted)")) {
    return Error::Unsupported(fmt::format("pid {}: executable {} was deleted", task.pid(), exe));
  }
  mm->set_exe(exe);
  proc->set_personality(STASIS_TRY(ReadPersonality(task.pid())));
  return Ok();
}

Status Restore(RemoteTask& task, const image::Process& proc) {
  const image::MmState& mm = proc.mm();
  STASIS_TRY(task.Call("personality", SYS_personality, proc.personality()));
  sys::UniqueFd exe(open(mm.exe().c_str(), O_RDONLY | O_CLOEXEC));
  if (!exe.valid()) return Error::Errno("open executable " + mm.exe());
  uint64_t auxv = STASIS_TRY(task.Put(mm.auxv().data(), mm.auxv().size(), 1024));
  Result<std::string> current = sys::proc::ReadLink(fmt::format("/proc/{}/exe", task.pid()));
  bool same_exe = current.ok() && current.value() == mm.exe();
  return task.WithPulledFd(exe.get(), [&](int exe_fd) -> Status {
    sys::abi::PrctlMmMap map = {};
    map.start_code = mm.start_code();
    map.end_code = mm.end_code();
    map.start_data = mm.start_data();
    map.end_data = mm.end_data();
    map.start_brk = mm.start_brk();
    map.brk = mm.brk();
    map.start_stack = mm.start_stack();
    map.arg_start = mm.arg_start();
    map.arg_end = mm.arg_end();
    map.env_start = mm.env_start();
    map.env_end = mm.env_end();
    map.auxv = auxv;
    map.auxv_size = static_cast<uint32_t>(mm.auxv().size());
    // The kernel refuses a new exe while the old one is still mapped; a
    // forked child already has its parent's, normally the same file.
    map.exe_fd = same_exe ? ~0u : static_cast<uint32_t>(exe_fd);
    uint64_t addr = STASIS_TRY(task.Put(&map, sizeof(map)));
    STASIS_TRY_CTX(task.Call("prctl(PR_SET_MM_MAP)", SYS_prctl, sys::abi::kPrSetMm,
                             sys::abi::kPrSetMmMap, addr, sizeof(map), 0),
                   "exe " + mm.exe());
    return Ok();
  });
}

namespace {

Status DumpRow(const ProcessDumpInput& in, image::Process* proc) {
  return Dump(*in.task, *in.stat, proc);
}

}  // namespace

const ProcessKind kKind = {
    .name = "mm",
    .summary =
        "The PR_SET_MM_MAP fields (code, data, brk, stack, arg and env boundaries, auxv, exe) and "
        "the personality",
    .dump_phase = DumpPhase::kInjected,
    .dump = DumpRow,
    .restore_phase = RestorePhase::kMemory,
    .restore = Restore,
};

}  // namespace stasis::kinds::mm
