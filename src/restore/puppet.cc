#include "restore/puppet.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/sched.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>

#include <algorithm>

#include "kinds/creds.h"
#include "kinds/fs_context.h"
#include "kinds/limits.h"
#include "kinds/memory.h"
#include "kinds/mm.h"
#include "kinds/signals.h"
#include "kinds/thread.h"
#include "kinds/vdso.h"

namespace stasis::restore {
namespace {

// One page for the `syscall` instruction, the rest for arguments.
constexpr uint64_t kScratchSize = 64 * 1024;
constexpr uint64_t kScratchArgs = 4096;
constexpr uint64_t kLowestScratch = 1 << 20;
constexpr uint64_t kUserTop = 0x7ffffffff000;  // x86_64 TASK_SIZE with 4-level paging
constexpr uint8_t kSyscallInsn[] = {0x0f, 0x05};

}  // namespace

Result<uint64_t> PuppetSyscallIp(pid_t host_pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/maps", host_pid)));
  for (const sys::proc::MapsEntry& m : STASIS_TRY(sys::proc::ParseMaps(text))) {
    if (m.path == "[vdso]") return sys::FindSyscallInsn(host_pid, m.start, m.end);
  }
  return Error(ErrorCode::kFailed, fmt::format("puppet {} has no [vdso]", host_pid));
}

namespace {

// Maps the scratch area in a hole of the image's layout that the puppet's
// own layout also leaves free.
Result<uint64_t> MapScratch(sys::Injector& inj, const image::Process& proc) {
  uint64_t candidate = kLowestScratch;
  for (size_t i = 0; i <= static_cast<size_t>(proc.vmas_size()); ++i) {
    uint64_t limit = i < static_cast<size_t>(proc.vmas_size()) ? proc.vmas(i).start() : kUserTop;
    if (candidate + kScratchSize <= limit) {
      long r =
          STASIS_TRY(inj.Raw(SYS_mmap, candidate, kScratchSize, PROT_READ | PROT_WRITE | PROT_EXEC,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0));
      if (r == static_cast<long>(candidate)) return candidate;
    }
    if (i < static_cast<size_t>(proc.vmas_size())) {
      candidate = std::max(candidate, proc.vmas(i).end() + 4096);
    }
  }
  return Error(ErrorCode::kFailed, "no room for the restore scratch area");
}

Status UnregisterOwnRseq(const sys::Tracee& tracee, sys::Injector& inj) {
  sys::abi::PtraceRseqConfiguration rseq = STASIS_TRY(tracee.GetRseq());
  if (rseq.rseq_abi_pointer == 0) return Ok();
  // The puppet's glibc registered rseq in memory we are about to unmap;
  // the kernel would fault on it at the next preemption.
  STASIS_TRY(inj.Call("rseq(unregister)", sys::abi::kNrRseq, rseq.rseq_abi_pointer,
                      rseq.rseq_abi_size, sys::abi::kRseqFlagUnregister, rseq.signature));
  return Ok();
}

Status UnmapAllBut(sys::Injector& inj, uint64_t keep) {
  STASIS_TRY(inj.Call("munmap(below scratch)", SYS_munmap, 0, keep));
  uint64_t above = keep + kScratchSize;
  STASIS_TRY(inj.Call("munmap(above scratch)", SYS_munmap, above, kUserTop - above));
  return Ok();
}

Status InstallFds(kinds::RemoteTask& task, const image::Process& proc, const LocalFiles& files) {
  for (const image::Fd& fd : proc.fds()) {
    auto it = files.find(fd.file_id());
    if (it == files.end()) {
      return Error::Corrupt(
          fmt::format("pid {} fd {}: no file {} in image", proc.pid(), fd.fd(), fd.file_id()));
    }
    int remote = STASIS_TRY(task.PullFd(it->second.get()));
    std::string what = fmt::format("pid {} fd {}", proc.pid(), fd.fd());
    if (remote == fd.fd()) {
      // pidfd_getfd always sets close-on-exec.
      if (!fd.cloexec()) STASIS_TRY_CTX(task.Call("fcntl", SYS_fcntl, remote, F_SETFD, 0), what);
      continue;
    }
    STASIS_TRY_CTX(task.Call("dup3", SYS_dup3, remote, fd.fd(), fd.cloexec() ? O_CLOEXEC : 0),
                   what);
    STASIS_TRY(task.Call("close", SYS_close, remote));
  }
  return Ok();
}

// Per-thread state of a thread made by CreateThreads, by injection into it.
Status RestoreThread(sys::Tracee& tracee, pid_t host_pid, uint64_t scratch,
                     const image::Process& proc, const image::Thread& thread) {
  sys::Injector inj = STASIS_TRY(sys::Injector::Create(tracee, scratch));
  kinds::RemoteTask task(host_pid, inj, scratch + kScratchArgs, kScratchSize - kScratchArgs);
  STASIS_TRY(kinds::thread::Restore(task, proc.pid(), thread));
  // Raw setresuid and capset change one thread only.
  STASIS_TRY(kinds::creds::Restore(task, proc.creds()));
  inj.Abandon();
  return kinds::thread::RestoreRegisters(tracee, thread);
}

// The leader makes each other thread with its TID (clone3 set_tid); the
// kernel attaches it to us (PTRACE_O_TRACECLONE) stopped, before it runs.
Status CreateThreads(sys::Tracee& leader, kinds::RemoteTask& task, uint64_t scratch,
                     const image::Process& proc, std::vector<sys::Tracee>* threads) {
  STASIS_TRY(leader.SetOptions(PTRACE_O_EXITKILL | PTRACE_O_TRACECLONE));
  for (int i = 1; i < proc.threads_size(); ++i) {
    const image::Thread& thread = proc.threads(i);
    pid_t tid = thread.tid();
    uint64_t tid_addr = STASIS_TRY(task.Put(&tid, sizeof(tid), 2048));
    sys::abi::CloneArgs args = {};
    args.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
    args.set_tid = tid_addr;
    args.set_tid_size = 1;
    uint64_t args_addr = STASIS_TRY(task.Put(&args, sizeof(args), 2304));
    STASIS_TRY_CTX(task.Call("clone3(thread)", sys::abi::kNrClone3, args_addr, sizeof(args)),
                   fmt::format("pid {} thread {}", proc.pid(), tid));
    pid_t host_tid = task.injector().last_child();
    if (host_tid <= 0) return Error(ErrorCode::kFailed, "clone3 made no thread we could see");
    threads->push_back(STASIS_TRY(sys::Tracee::Adopt(host_tid)));
    STASIS_TRY_CTX(RestoreThread(threads->back(), task.pid(), scratch, proc, thread),
                   fmt::format("thread {}", tid));
  }
  return Ok();
}

}  // namespace

int FreeFdSlot(const image::Process& proc) {
  std::vector<int> used;
  for (const image::Fd& fd : proc.fds()) used.push_back(fd.fd());
  std::sort(used.begin(), used.end());
  int slot = 0;
  for (int fd : used) {
    if (fd == slot) ++slot;
    if (fd > slot) break;
  }
  return slot;
}

Status BuildTask(sys::Tracee& tracee, pid_t host_pid, const PuppetPlan& plan,
                 const PageFeeder& feed_pages, std::vector<sys::Tracee>* threads) {
  const image::Process& proc = *plan.proc;
  if (proc.threads_size() < 1) return Error::Corrupt("image task without threads");
  sys::Injector inj = STASIS_TRY(sys::Injector::Create(tracee, STASIS_TRY(PuppetSyscallIp(host_pid))));
  STASIS_TRY(UnregisterOwnRseq(tracee, inj));

  // 1. An empty address space but for a page that holds `syscall`.
  uint64_t scratch = STASIS_TRY(MapScratch(inj, proc));
  STASIS_TRY(sys::WriteMemory(host_pid, scratch, kSyscallInsn, sizeof(kSyscallInsn)));
  inj.set_syscall_ip(scratch);
  STASIS_TRY(UnmapAllBut(inj, scratch));
  kinds::RemoteTask task(host_pid, inj, scratch + kScratchArgs, kScratchSize - kScratchArgs);
  task.set_restorer_pidfd(plan.pidfd_slot);

  // 2. Memory: vdso block, every VMA, pages, then final protections.
  STASIS_TRY(kinds::vdso::Restore(task, proc));
  auto local_fd = [&plan](uint64_t id) -> Result<int> {
    auto it = plan.files->find(id);
    if (it == plan.files->end()) return Error::Corrupt(fmt::format("no file {} in image", id));
    return it->second.get();
  };
  STASIS_TRY(kinds::memory::MapVmas(task, proc, local_fd));
  STASIS_TRY(feed_pages(proc));
  STASIS_TRY(kinds::memory::FinishVmas(task, proc));
  STASIS_TRY(kinds::mm::Restore(task, proc));

  // 3. Files and process attributes, while the puppet is still privileged.
  STASIS_TRY(InstallFds(task, proc, *plan.files));
  STASIS_TRY(kinds::fs_context::Restore(task, proc));
  STASIS_TRY(kinds::limits::Restore(task, proc));
  STASIS_TRY(kinds::signals::Restore(task, proc));
  // Threads after everything they share is in place, before credentials.
  STASIS_TRY(CreateThreads(tracee, task, scratch, proc, threads));
  STASIS_TRY(kinds::thread::Restore(task, proc.pid(), proc.threads(0)));
  // 4. Credentials last: they may drop what every step above needed.
  STASIS_TRY(kinds::creds::Restore(task, proc.creds()));
  STASIS_TRY(task.Call("close(restorer pidfd)", SYS_close, plan.pidfd_slot));

  // 5. Remove the scratch area, running the last call from the real vdso.
  inj.set_syscall_ip(STASIS_TRY(PuppetSyscallIp(host_pid)));
  STASIS_TRY(inj.Call("munmap(scratch)", SYS_munmap, scratch, kScratchSize));
  inj.Abandon();
  return kinds::thread::RestoreRegisters(tracee, proc.threads(0));
}

}  // namespace stasis::restore
