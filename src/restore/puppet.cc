#include "restore/puppet.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>

#include <algorithm>

#include "kinds/memory.h"
#include "kinds/mm.h"
#include "kinds/registry.h"
#include "kinds/thread.h"
#include "kinds/vdso.h"
#include "mem/lazy_ranges.h"
#include "sys/pidfds.h"
#include "sys/uffd.h"

namespace stasis::restore {
namespace {

// One page for the `syscall` instruction, the rest for arguments.
constexpr uint64_t kScratchSize = 64 * 1024;
constexpr uint64_t kScratchArgs = 4096;
constexpr uint64_t kLowestScratch = 1 << 20;
constexpr uint64_t kUserTop = 0x7ffffffff000;  // x86_64 TASK_SIZE with 4-level paging
constexpr uint8_t kSyscallInsn[] = {0x0f, 0x05};

using Range = std::pair<uint64_t, uint64_t>;

// Maps the scratch area in a hole of the image's layout that the puppet's
// current layout also leaves free, and puts a `syscall` at its start.
Result<uint64_t> MapScratch(sys::Injector& inj, pid_t host_pid, const image::Process& proc) {
  uint64_t candidate = kLowestScratch;
  for (int i = 0; i <= proc.vmas_size(); ++i) {
    uint64_t limit = i < proc.vmas_size() ? proc.vmas(i).start() : kUserTop;
    if (candidate + kScratchSize <= limit) {
      long r =
          STASIS_TRY(inj.Raw(SYS_mmap, candidate, kScratchSize, PROT_READ | PROT_WRITE | PROT_EXEC,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0));
      if (r == static_cast<long>(candidate)) {
        STASIS_TRY(sys::WriteMemory(host_pid, candidate, kSyscallInsn, sizeof(kSyscallInsn)));
        inj.set_syscall_ip(candidate);
        return candidate;
      }
    }
    if (i < proc.vmas_size()) candidate = std::max(candidate, proc.vmas(i).end() + 4096);
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

// Unmaps every part of the user address space outside `keep`.
Status UnmapAllExcept(sys::Injector& inj, std::vector<Range> keep) {
  std::sort(keep.begin(), keep.end());
  uint64_t from = 0;
  for (const Range& r : keep) {
    if (r.first > from) STASIS_TRY(inj.Call("munmap", SYS_munmap, from, r.first - from));
    from = std::max(from, r.second);
  }
  if (from < kUserTop) STASIS_TRY(inj.Call("munmap", SYS_munmap, from, kUserTop - from));
  return Ok();
}

std::vector<Range> VdsoBlock(const image::Process& proc) {
  std::vector<Range> out;
  for (const image::Vma& v : proc.vmas()) {
    if (kinds::memory::IsVdsoBlock(v)) out.push_back({v.start(), v.end()});
  }
  return out;
}

// The registry entry of File `id`, for its hooks.
const kinds::FdKind* KindOfFile(const PuppetPlan& plan, uint64_t id, const image::File** file) {
  auto it = plan.image_files->find(id);
  if (it == plan.image_files->end()) return nullptr;
  *file = it->second;
  return kinds::FindFdKind(it->second->kind());
}

Status InstallFds(kinds::RemoteTask& task, const PuppetPlan& plan) {
  const image::Process& proc = *plan.proc;
  const LocalFiles& files = *plan.files;
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
    } else {
      STASIS_TRY_CTX(task.Call("dup3", SYS_dup3, remote, fd.fd(), fd.cloexec() ? O_CLOEXEC : 0),
                     what);
      STASIS_TRY(task.Call("close", SYS_close, remote));
    }
    const image::File* file = nullptr;
    const kinds::FdKind* kind = KindOfFile(plan, fd.file_id(), &file);
    if (kind != nullptr && kind->after_install != nullptr) {
      STASIS_TRY_CTX(kind->after_install(task, proc, *file, fd.fd()), what);
    }
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
  STASIS_TRY(kinds::RestoreProcessKinds(kinds::RestorePhase::kCredentials, task, proc));
  inj.Abandon();
  return kinds::thread::RestoreRegisters(tracee, thread);
}

}  // namespace

Result<uint64_t> PuppetSyscallIp(pid_t host_pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/maps", host_pid)));
  for (const sys::proc::MapsEntry& m : STASIS_TRY(sys::proc::ParseMaps(text))) {
    if (m.path == "[vdso]") return sys::FindSyscallInsn(host_pid, m.start, m.end);
  }
  return Error(ErrorCode::kFailed, fmt::format("puppet {} has no [vdso]", host_pid));
}

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

// The leader makes each other thread with its TID (clone3 set_tid); the
// kernel attaches it to us (PTRACE_O_TRACECLONE) stopped, before it runs.
Status CreateThreads(kinds::RemoteTask& task, uint64_t scratch, const image::Process& proc,
                     std::vector<sys::Tracee>* threads) {
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

TaskBuild::TaskBuild(sys::Tracee& leader, pid_t host_pid, const PuppetPlan& plan, sys::Injector inj)
    : leader_(leader), host_pid_(host_pid), plan_(plan), inj_(std::move(inj)) {}

TaskBuild::~TaskBuild() = default;

Result<std::unique_ptr<TaskBuild>> TaskBuild::StartFresh(sys::Tracee& leader, pid_t host_pid,
                                                         const PuppetPlan& plan,
                                                         mem::PageStore& pages) {
  sys::Injector inj =
      STASIS_TRY(sys::Injector::Create(leader, STASIS_TRY(PuppetSyscallIp(host_pid))));
  STASIS_TRY(UnregisterOwnRseq(leader, inj));
  std::unique_ptr<TaskBuild> b(new TaskBuild(leader, host_pid, plan, std::move(inj)));
  // An empty address space but for the scratch page that holds `syscall`.
  b->scratch_ = STASIS_TRY(MapScratch(b->inj_, host_pid, *plan.proc));
  STASIS_TRY(UnmapAllExcept(b->inj_, {{b->scratch_, b->scratch_ + kScratchSize}}));
  STASIS_TRY(b->MapMemory(pages, /*vdso_in_place=*/false));
  return b;
}

Result<std::unique_ptr<TaskBuild>> TaskBuild::StartForked(sys::Tracee& leader, pid_t host_pid,
                                                          const PuppetPlan& plan,
                                                          const ForkOrigin& origin,
                                                          mem::PageStore& pages) {
  // The child is a copy of its parent: run from the parent's scratch page.
  sys::Injector inj = STASIS_TRY(sys::Injector::Create(leader, origin.parent_scratch));
  std::unique_ptr<TaskBuild> b(new TaskBuild(leader, host_pid, plan, std::move(inj)));
  b->scratch_ = STASIS_TRY(MapScratch(b->inj_, host_pid, *plan.proc));
  // Keep what it shares with its parent copy-on-write, and the vdso block
  // when it sits where the child's was.
  std::vector<Range> keep = {{b->scratch_, b->scratch_ + kScratchSize}};
  for (const image::Vma& v : plan.proc->vmas()) {
    if (v.inherited()) keep.push_back({v.start(), v.end()});
  }
  bool vdso_in_place = VdsoBlock(*plan.proc) == VdsoBlock(*origin.parent);
  if (vdso_in_place) {
    for (const Range& r : VdsoBlock(*plan.proc)) keep.push_back(r);
  }
  STASIS_TRY(UnmapAllExcept(b->inj_, keep));
  STASIS_TRY(b->MapMemory(pages, vdso_in_place));
  return b;
}

Status TaskBuild::MapMemory(mem::PageStore& pages, bool vdso_in_place) {
  const image::Process& proc = *plan_.proc;
  task_ = std::make_unique<kinds::RemoteTask>(host_pid_, inj_, scratch_ + kScratchArgs,
                                              kScratchSize - kScratchArgs);
  task_->set_restorer_pidfd(plan_.pidfd_slot);
  task_->set_log(plan_.log);
  if (!vdso_in_place) STASIS_TRY(kinds::vdso::Restore(*task_, proc));
  auto local_fd = [this](uint64_t id) -> Result<int> {
    auto it = plan_.files->find(id);
    if (it == plan_.files->end()) return Error::Corrupt(fmt::format("no file {} in image", id));
    return it->second.get();
  };
  STASIS_TRY(kinds::memory::MapVmas(*task_, proc, local_fd));
  pages_ = &pages;
  if (plan_.lazy != nullptr) STASIS_TRY(ServeLazily());
  if (lazy_ranges_.empty()) {
    return pages.Attach(proc.pid(), std::make_unique<mem::ProcessMemorySink>(host_pid_));
  }
  return pages.Attach(proc.pid(), plan_.lazy->SinkFor(proc.pid(), host_pid_),
                      mem::Delivery::kOnDemand);
}

// A userfaultfd made inside the task (its mm is the one it serves) and
// taken into the restorer; not limited to user-mode faults, so the
// kernel's own accesses (read() into a missing page) are served too.
Status TaskBuild::ServeLazily() {
  std::vector<mem::Range> ranges = mem::LazyRanges(*plan_.proc);
  if (ranges.empty()) return Ok();
  long fd = STASIS_TRY(task_->Call("userfaultfd", SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  Result<sys::UniqueFd> pidfd = sys::PidfdOpen(host_pid_);
  Result<sys::UniqueFd> uffd =
      pidfd.ok() ? sys::PidfdGetfd(pidfd.value().get(), host_pid_, static_cast<int>(fd))
                 : Result<sys::UniqueFd>(pidfd.error());
  STASIS_TRY(task_->Call("close(userfaultfd)", SYS_close, static_cast<uint64_t>(fd)));
  sys::UniqueFd own = STASIS_TRY(std::move(uffd));
  STASIS_TRY(sys::uffd::EnableMissing(own.get()));
  // A page in each VMA before registering splits it: the parts then share
  // the VMA's anon_vma, which they must for unregistering to merge them
  // back (parts that each fault their own first page get one each). The
  // first page is written again from the image before the tree runs.
  //
  // With transparent huge pages (MADV_HUGEPAGE, or THP "always"), that
  // write could fault a whole huge page in, zeros over pages still to come
  // that no fault would then ask for: THP is off for the task while it
  // writes. Once the VMA is split, its one-page head cannot hold a huge
  // page, and a fault in the registered part goes to the pager, which
  // copies small pages.
  long thp_was_off = STASIS_TRY(
      task_->Call("prctl(PR_GET_THP_DISABLE)", SYS_prctl, PR_GET_THP_DISABLE, 0, 0, 0, 0));
  if (thp_was_off == 0) {
    STASIS_TRY(task_->Call("prctl(PR_SET_THP_DISABLE)", SYS_prctl, PR_SET_THP_DISABLE, 1, 0, 0, 0));
  }
  static const uint8_t kZeroPage[image::kPageSize] = {};
  for (const mem::Range& r : ranges) {
    STASIS_TRY(
        sys::WriteMemory(host_pid_, r.start - sizeof kZeroPage, kZeroPage, sizeof kZeroPage));
  }
  if (thp_was_off == 0) {
    STASIS_TRY(task_->Call("prctl(PR_SET_THP_DISABLE)", SYS_prctl, PR_SET_THP_DISABLE, 0, 0, 0, 0));
  }
  for (const mem::Range& r : ranges) {
    STASIS_TRY_CTX(sys::uffd::RegisterMissing(own.get(), r.start, r.end),
                   fmt::format("pid {}", plan_.proc->pid()));
  }
  lazy_ranges_ = ranges;
  return plan_.lazy->Serve(plan_.proc->pid(), std::move(own), std::move(ranges));
}

Status TaskBuild::FinishMemory() {
  const image::Process& proc = *plan_.proc;
  if (!lazy_ranges_.empty()) {
    mem::RangeSet lazy;
    for (const mem::Range& r : lazy_ranges_) lazy.Add(r.start, r.end);
    for (const image::Vma& v : proc.vmas()) {
      if (!v.has_pages()) continue;
      for (const mem::Range& r : lazy.Gaps(v.start(), v.end())) {
        STASIS_TRY(pages_->Fill(proc.pid(), r.start, r.end, /*wait=*/true));
      }
    }
  }
  STASIS_TRY(kinds::memory::FinishVmas(*task_, proc));
  return kinds::mm::Restore(*task_, proc);
}

Status TaskBuild::CompleteInherited(const image::Process& child) {
  if (lazy_ranges_.empty()) return Ok();
  for (const image::Vma& v : child.vmas()) {
    if (v.inherited()) STASIS_TRY(pages_->Fill(plan_.proc->pid(), v.start(), v.end(), true));
  }
  return Ok();
}

Result<pid_t> TaskBuild::ForkChild(int pid, int exit_signal) {
  uint64_t tid_addr = STASIS_TRY(task_->Put(&pid, sizeof(pid), 2048));
  sys::abi::CloneArgs args = {};
  args.exit_signal = static_cast<uint64_t>(exit_signal);
  args.set_tid = tid_addr;
  args.set_tid_size = 1;
  uint64_t args_addr = STASIS_TRY(task_->Put(&args, sizeof(args), 2304));
  STASIS_TRY_CTX(task_->Call("clone3", sys::abi::kNrClone3, args_addr, sizeof(args)),
                 fmt::format("fork pid {} from pid {}", pid, plan_.proc->pid()));
  if (inj_.last_child() <= 0) return Error(ErrorCode::kFailed, "clone3 made no child we saw");
  return inj_.last_child();
}

Result<long> TaskBuild::Call(const char* name, long nr, uint64_t a1, uint64_t a2, uint64_t a3,
                             uint64_t a4) {
  return inj_.Call(name, nr, a1, a2, a3, a4);
}

Status TaskBuild::RestoreAttributes(std::vector<sys::Tracee>* threads) {
  const image::Process& proc = *plan_.proc;
  STASIS_TRY(InstallFds(*task_, plan_));
  STASIS_TRY(kinds::RestoreProcessKinds(kinds::RestorePhase::kAttributes, *task_, proc));
  // Threads after everything they share is in place, before credentials.
  STASIS_TRY(CreateThreads(*task_, scratch_, proc, threads));
  STASIS_TRY(kinds::RestoreProcessKinds(kinds::RestorePhase::kAfterThreads, *task_, proc));
  return kinds::thread::Restore(*task_, proc.pid(), proc.threads(0));
}

Status TaskBuild::RunAfterTree(const std::vector<uint64_t>& ids) {
  for (uint64_t id : ids) {
    const image::File* file = nullptr;
    const kinds::FdKind* kind = KindOfFile(plan_, id, &file);
    if (kind == nullptr || kind->after_tree == nullptr) continue;
    for (const image::Fd& fd : plan_.proc->fds()) {
      if (fd.file_id() != id) continue;
      STASIS_TRY_CTX(kind->after_tree(*task_, *plan_.proc, *file, fd.fd()),
                     fmt::format("pid {} fd {}", plan_.proc->pid(), fd.fd()));
      break;
    }
  }
  return Ok();
}

Status TaskBuild::Finish() {
  const image::Process& proc = *plan_.proc;
  STASIS_TRY(kinds::RestoreProcessKinds(kinds::RestorePhase::kCredentials, *task_, proc));
  STASIS_TRY(task_->Call("close(restorer pidfd)", SYS_close, plan_.pidfd_slot));
  // Remove the scratch area, running the last call from the real vdso.
  inj_.set_syscall_ip(STASIS_TRY(PuppetSyscallIp(host_pid_)));
  STASIS_TRY(inj_.Call("munmap(scratch)", SYS_munmap, scratch_, kScratchSize));
  inj_.Abandon();
  return kinds::thread::RestoreRegisters(leader_, proc.threads(0));
}

ForkedPuppet::ForkedPuppet(sys::Injector inj, pid_t pid, uint64_t scratch)
    : inj_(std::move(inj)), task_(pid, inj_, scratch + kScratchArgs, kScratchSize - kScratchArgs) {}

Result<std::unique_ptr<ForkedPuppet>> ForkedPuppet::Enter(sys::Tracee& tracee,
                                                          const ForkOrigin& origin) {
  sys::Injector inj = STASIS_TRY(sys::Injector::Create(tracee, origin.parent_scratch));
  return std::unique_ptr<ForkedPuppet>(
      new ForkedPuppet(std::move(inj), tracee.tid(), origin.parent_scratch));
}

Result<long> ForkedPuppet::Call(const char* name, long nr, uint64_t a1, uint64_t a2, uint64_t a3,
                                uint64_t a4) {
  return inj_.Call(name, nr, a1, a2, a3, a4);
}

}  // namespace stasis::restore
