#include "checkpoint/task_dump.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include "kinds/memory.h"
#include "kinds/registry.h"
#include "kinds/thread.h"

namespace stasis::checkpoint {
namespace {

constexpr size_t kScratchSize = 64 * 1024;
constexpr uint64_t kPfKthread = 0x00200000;  // include/linux/sched.h

Result<sys::proc::ProcStatus> ReadStatus(pid_t pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/status", pid)));
  return sys::proc::ParseStatus(text);
}

Result<sys::proc::ProcStat> ReadStat(pid_t pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/stat", pid)));
  return sys::proc::ParseStat(text);
}

Result<uint64_t> FindVdsoSyscall(pid_t pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/maps", pid)));
  for (const sys::proc::MapsEntry& m : STASIS_TRY(sys::proc::ParseMaps(text))) {
    if (m.path == "[vdso]") return sys::FindSyscallInsn(pid, m.start, m.end);
  }
  return Error::Unsupported(fmt::format("pid {}: no [vdso] to run system calls from", pid));
}

// An anonymous mapping in the task for syscall arguments; unmapped again
// before the address space is read, so it never shows in the image.
class Scratch {
 public:
  static Result<Scratch> Map(sys::Injector& inj) {
    long addr = STASIS_TRY(inj.Call("mmap(scratch)", SYS_mmap, 0, kScratchSize,
                                    PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    return Scratch(inj, static_cast<uint64_t>(addr));
  }
  Scratch(Scratch&& o) noexcept : inj_(o.inj_), addr_(std::exchange(o.addr_, 0)) {}
  ~Scratch() { (void)Unmap(); }
  Status Unmap() {
    if (addr_ == 0) return Ok();
    uint64_t addr = std::exchange(addr_, 0);
    STASIS_TRY(inj_.Call("munmap(scratch)", SYS_munmap, addr, kScratchSize));
    return Ok();
  }
  uint64_t addr() const { return addr_; }

 private:
  Scratch(sys::Injector& inj, uint64_t addr) : inj_(inj), addr_(addr) {}
  sys::Injector& inj_;
  uint64_t addr_;
};

// The task's id in its own PID namespace: the last NSpid entry.
Result<pid_t> OwnTid(pid_t pid, pid_t host_tid, const sys::proc::ProcStatus** leader,
                     sys::proc::ProcStatus* out) {
  std::string text =
      STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/task/{}/status", pid, host_tid)));
  *out = STASIS_TRY(sys::proc::ParseStatus(text));
  if (*leader != nullptr) {
    const sys::proc::ProcStatus& l = **leader;
    bool same = std::equal(l.uid, l.uid + 4, out->uid) && std::equal(l.gid, l.gid + 4, out->gid) &&
                l.groups == out->groups && l.cap_eff == out->cap_eff && l.cap_prm == out->cap_prm &&
                l.cap_inh == out->cap_inh;
    if (!same) {
      return Error::Unsupported(
          fmt::format("pid {} thread {}: threads with different credentials are not supported yet",
                      pid, host_tid));
    }
  }
  return out->ns_pid.empty() ? host_tid : out->ns_pid.back();
}

// Per-thread state of one non-leader thread, by injection into it.
Status CollectThread(pid_t pid, sys::Tracee& tracee, uint64_t syscall_ip, uint64_t scratch,
                     pid_t own_tid, image::Thread* out) {
  sys::Injector inj = STASIS_TRY(sys::Injector::Create(tracee, syscall_ip));
  kinds::RemoteTask task(pid, inj, scratch, kScratchSize);
  out->set_tid(own_tid);
  STASIS_TRY(
      kinds::thread::Dump(tracee, task, inj.saved_regs(), inj.saved_sigmask(), tracee.tid(), out));
  return inj.Finish();
}

// What only the task can tell, asked with injected system calls.
Status CollectInjected(pid_t pid, std::vector<sys::Tracee>& threads,
                       const sys::proc::ProcStatus& status, const sys::proc::ProcStat& stat,
                       image::Process* proc) {
  uint64_t syscall_ip = STASIS_TRY(FindVdsoSyscall(pid));
  sys::Injector inj = STASIS_TRY(sys::Injector::Create(threads[0], syscall_ip));
  Scratch scratch = STASIS_TRY(Scratch::Map(inj));
  kinds::RemoteTask task(pid, inj, scratch.addr(), kScratchSize);
  image::Thread* leader = proc->add_threads();
  leader->set_tid(proc->pid());
  STASIS_TRY(
      kinds::thread::Dump(threads[0], task, inj.saved_regs(), inj.saved_sigmask(), pid, leader));
  const sys::proc::ProcStatus* leader_status = &status;
  for (size_t i = 1; i < threads.size(); ++i) {
    sys::proc::ProcStatus thread_status;
    pid_t own = STASIS_TRY(OwnTid(pid, threads[i].tid(), &leader_status, &thread_status));
    STASIS_TRY(
        CollectThread(pid, threads[i], syscall_ip, scratch.addr(), own, proc->add_threads()));
  }
  kinds::ProcessDumpInput in = {
      .pid = pid, .task = &task, .leader = &threads[0], .status = &status, .stat = &stat};
  STASIS_TRY(kinds::DumpProcessKinds(kinds::DumpPhase::kInjected, in, proc));
  STASIS_TRY(scratch.Unmap());
  return inj.Finish();
}

}  // namespace

namespace {

// The restore rebuilds a tree in this host's namespaces (and a fresh PID and
// mount namespace of its own): a task living in any other namespace would
// come back changed, its sockets in another network, so it is refused. A
// nested PID namespace was checked to be stasis's own (tree.cc); its tasks
// then also have that namespace's own mount namespace. An isolated
// session's tasks live in its network namespace, `session_netns`.
Status CheckNamespaces(pid_t pid, const std::string& session_netns) {
  std::string own_pidns = STASIS_TRY(sys::proc::ReadLink("/proc/self/ns/pid"));
  std::string pidns = STASIS_TRY(sys::proc::ReadLink(fmt::format("/proc/{}/ns/pid", pid)));
  // A time namespace is carried (clocks.h), as long as the tree shares one.
  std::vector<const char*> kinds = {"user", "net", "ipc", "uts", "cgroup"};
  if (pidns == own_pidns) kinds.push_back("mnt");
  for (const char* kind : kinds) {
    std::string own = STASIS_TRY(sys::proc::ReadLink(fmt::format("/proc/self/ns/{}", kind)));
    std::string theirs = STASIS_TRY(sys::proc::ReadLink(fmt::format("/proc/{}/ns/{}", pid, kind)));
    if (theirs != own && !(kind == std::string_view("net") && theirs == session_netns)) {
      if (kind == std::string_view("net")) {
        return Error::Unsupported(fmt::format(
            "pid {} lives in another net namespace ({}); only an isolated session's own "
            "network is supported: dump it with --session NAME",
            pid, theirs));
      }
      return Error::Unsupported(fmt::format(
          "pid {} lives in another {} namespace ({}); not supported yet", pid, kind, theirs));
    }
  }
  return Ok();
}

}  // namespace

void SetOwnIds(pid_t host_pid, const sys::proc::ProcStatus& status, const sys::proc::ProcStat& stat,
               image::Process* proc) {
  auto own = [](const std::vector<int>& ns, int outside) {
    return ns.empty() ? outside : ns.back();
  };
  proc->set_pid(own(status.ns_pid, host_pid));
  proc->set_pgid(own(status.ns_pgid, stat.pgrp));
  proc->set_sid(own(status.ns_sid, stat.session));
  proc->set_exit_signal(stat.exit_signal);
}

Status PrecheckTask(pid_t pid, const std::string& session_netns) {
  if (pid == getpid()) return Error::Invalid("stasis cannot dump itself");
  Result<sys::proc::ProcStatus> status = ReadStatus(pid);
  if (!status.ok()) return Error::NotFound(fmt::format("no process {}", pid));
  sys::proc::ProcStat stat = STASIS_TRY(ReadStat(pid));
  if (stat.flags & kPfKthread)
    return Error::Unsupported(fmt::format("pid {} is a kernel thread", pid));
  if (status->tracer_pid != 0) {
    return Error::Unsupported(
        fmt::format("pid {} is being traced by pid {}", pid, status->tracer_pid));
  }
  if (status->state == 'Z' || stat.state == 'Z') {
    return Error::Unsupported(fmt::format("pid {} is a zombie", pid));
  }
  STASIS_TRY(CheckNamespaces(pid, session_netns));
  if (status->seccomp != 0) {
    return Error::Unsupported(fmt::format("pid {}: seccomp filters are not supported yet", pid));
  }
  return Ok();
}

Result<CollectedTask> CollectTask(pid_t pid, std::vector<sys::Tracee>& threads,
                                  image::Manifest* manifest, const mem::ParentView* parent) {
  CollectedTask out;
  image::Process& proc = out.proc;
  sys::proc::ProcStatus status = STASIS_TRY(ReadStatus(pid));
  sys::proc::ProcStat stat = STASIS_TRY(ReadStat(pid));
  SetOwnIds(pid, status, stat, &proc);
  STASIS_TRY(CollectInjected(pid, threads, status, stat, &proc));
  STASIS_TRY(kinds::memory::DumpVmas(pid, &proc));
  kinds::ProcessDumpInput in = {
      .pid = pid, .leader = &threads[0], .status = &status, .stat = &stat, .manifest = manifest};
  STASIS_TRY(kinds::DumpProcessKinds(kinds::DumpPhase::kAfterVmas, in, &proc));
  out.pages = STASIS_TRY(mem::PlanPages(pid, &proc, parent));
  return out;
}

}  // namespace stasis::checkpoint
