#include "restore/tree.h"

#include <fmt/format.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <map>
#include <set>

#include "kinds/registry.h"
#include "sys/kernel_abi.h"

namespace stasis::restore {
namespace {

constexpr long kTraceOptions = PTRACE_O_EXITKILL | PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK;

const image::Process* Find(const std::vector<image::Process>& procs, int pid) {
  for (const image::Process& p : procs) {
    if (p.pid() == pid) return &p;
  }
  return nullptr;
}

// After setsid(): each kind's after_setsid hook (the controlling terminal),
// with the File pulled into the new session leader for the call.
Status AfterSetsid(sys::Injector& inj, pid_t host_pid, int slot, const image::Process& proc,
                   const TreeFiles& files) {
  kinds::RemoteTask task(host_pid, inj, 0, 0);
  task.set_restorer_pidfd(slot);
  for (const image::Fd& fd : proc.fds()) {
    auto image_file = files.image->find(fd.file_id());
    auto local = files.local->find(fd.file_id());
    if (image_file == files.image->end() || local == files.local->end()) continue;
    const kinds::FdKind* kind = kinds::FindFdKind(image_file->second->kind());
    if (kind == nullptr || kind->after_setsid == nullptr) continue;
    STASIS_TRY(task.WithPulledFd(local->second.get(), [&](int remote) -> Status {
      return kind->after_setsid(task, proc, *image_file->second, remote);
    }));
  }
  return Ok();
}

// setsid() in the root puppet before it is built: before any child exists.
Status PristineSetsid(sys::Tracee& tracee, int slot, const image::Process& proc,
                      const TreeFiles& files) {
  uint64_t ip = STASIS_TRY(PuppetSyscallIp(tracee.tid()));
  sys::Injector inj = STASIS_TRY(sys::Injector::Create(tracee, ip));
  STASIS_TRY(inj.Call("setsid", SYS_setsid));
  STASIS_TRY(AfterSetsid(inj, tracee.tid(), slot, proc, files));
  return inj.Finish();
}

// A system call in any process of the tree: through its build, or (a zombie
// not yet exited) through the scratch page it inherited.
Result<long> CallIn(TreeProcess& t, const char* name, long nr, uint64_t a1 = 0, uint64_t a2 = 0,
                    uint64_t a3 = 0, uint64_t a4 = 0) {
  if (t.build) return t.build->Call(name, nr, a1, a2, a3, a4);
  std::unique_ptr<ForkedPuppet> p = STASIS_TRY(ForkedPuppet::Enter(*t.leader, t.origin));
  long r = STASIS_TRY(p->Call(name, nr, a1, a2, a3, a4));
  STASIS_TRY(p->injector().Finish());
  return r;
}

Status SetSigchld(TaskBuild& build, const sys::abi::KernelSigaction& act) {
  uint64_t addr = STASIS_TRY(build.task().Put(&act, sizeof(act), 3072));
  STASIS_TRY(build.Call("rt_sigaction(SIGCHLD)", SYS_rt_sigaction, SIGCHLD, addr, 0, 8));
  return Ok();
}

sys::abi::KernelSigaction ImageSigchld(const image::Process& p) {
  if (p.sigactions_size() < SIGCHLD) return {};
  const image::SigAction& a = p.sigactions(SIGCHLD - 1);
  return {a.handler(), a.flags(), a.restorer(), a.mask()};
}

// Ends a puppet the way the dumped zombie ended, and consumes the exit
// notification we get as its tracer; the zombie stays for its parent.
Status Exit(TreeProcess& t, const ForkOrigin& origin, int status) {
  {
    std::unique_ptr<ForkedPuppet> p = STASIS_TRY(ForkedPuppet::Enter(*t.leader, origin));
    int sig = status & 0x7f;
    if (sig == 0) {
      (void)p->injector().Raw(SYS_exit_group, (status >> 8) & 0xff);
    } else {
      rlimit no_core = {0, 0};  // a core file is not part of the state
      uint64_t addr = STASIS_TRY(p->task().Put(&no_core, sizeof(no_core), 0));
      STASIS_TRY(p->Call("prlimit64", SYS_prlimit64, 0, RLIMIT_CORE, addr));
      sys::abi::KernelSigaction dfl = {};
      addr = STASIS_TRY(p->task().Put(&dfl, sizeof(dfl), 64));
      STASIS_TRY(p->Call("rt_sigaction", SYS_rt_sigaction, sig, addr, 0, 8));
      STASIS_TRY(p->injector().Finish());
      if (ptrace(PTRACE_CONT, t.host_pid, nullptr, sig) < 0) return Error::Errno("ptrace(CONT)");
    }
  }
  int st;
  while (waitpid(t.host_pid, &st, __WALL) >= 0 && !WIFEXITED(st) && !WIFSIGNALED(st)) {
    ptrace(PTRACE_CONT, t.host_pid, nullptr, 0);
  }
  (void)t.leader->Detach();
  t.leader.reset();
  return Ok();
}

// A group whose leader is gone: a helper with the leader's PID, forked by a
// member, creates it and exits once the members joined; the member ignores
// SIGCHLD meanwhile, so the kernel reaps the helper at once.
Status MakeLeaderlessGroup(TreeProcess& member, int pgid, std::vector<TreeProcess*> members) {
  if (!member.build) {
    return Error::Unsupported(
        fmt::format("group {}: its leader exited and only zombies remain", pgid));
  }
  TreeProcess helper;
  helper.host_pid = STASIS_TRY(member.build->ForkChild(pgid, SIGCHLD));
  helper.leader = std::make_unique<sys::Tracee>(STASIS_TRY(sys::Tracee::Adopt(helper.host_pid)));
  helper.origin = member.build->origin_for_children();
  STASIS_TRY(CallIn(helper, "setpgid(helper)", SYS_setpgid, 0, 0));
  for (TreeProcess* m : members) {
    STASIS_TRY_CTX(CallIn(*m, "setpgid", SYS_setpgid, 0, pgid),
                   fmt::format("pid {} joins group {}", m->proc->pid(), pgid));
  }
  sys::abi::KernelSigaction ign = {reinterpret_cast<uint64_t>(SIG_IGN), 0, 0, 0};
  STASIS_TRY(SetSigchld(*member.build, ign));
  STASIS_TRY(Exit(helper, helper.origin, 0));
  return SetSigchld(*member.build, ImageSigchld(*member.proc));
}

}  // namespace

Status ValidateTree(const std::vector<image::Process>& procs) {
  if (procs.empty()) return Error::Corrupt("image holds no process");
  if (procs[0].zombie()) return Error::Corrupt("the root of the image is a zombie");
  std::set<int> pids;
  for (const image::Process& p : procs) {
    if (!pids.insert(p.pid()).second) return Error::Corrupt(fmt::format("pid {} twice", p.pid()));
    if (&p == procs.data()) continue;
    const image::Process* parent = Find(procs, p.ppid());
    if (parent == nullptr || parent >= &p) {
      return Error::Corrupt(
          fmt::format("pid {}: parent {} is not before it in the image", p.pid(), p.ppid()));
    }
    if (p.sid() != p.pid() && p.sid() != parent->sid()) {
      return Error::Unsupported(fmt::format(
          "pid {} is in session {}, neither its own nor its parent's ({}); restoring that "
          "session layout is not supported yet",
          p.pid(), p.sid(), parent->sid()));
    }
  }
  return Ok();
}

Status CreateRoot(Spawner& spawner, const std::vector<image::Process>& procs,
                  const TreeFiles& files, std::vector<TreeProcess>* out) {
  out->reserve(procs.size());
  const image::Process& root = procs[0];
  TreeProcess& first = out->emplace_back();
  first.proc = &root;
  first.pidfd_slot = FreeFdSlot(root);
  Puppet puppet = STASIS_TRY(spawner.CreatePuppet(root.pid(), first.pidfd_slot));
  first.host_pid = puppet.host_pid;
  first.leader =
      std::make_unique<sys::Tracee>(STASIS_TRY(sys::Tracee::Seize(puppet.host_pid, true)));
  STASIS_TRY(first.leader->SetOptions(kTraceOptions));
  if (root.sid() == root.pid()) {
    STASIS_TRY(PristineSetsid(*first.leader, first.pidfd_slot, root, files));
  }
  return Ok();
}

Result<size_t> ForkInto(TreeProcess& parent, const image::Process& c, const TreeFiles& files,
                        std::vector<TreeProcess>* out) {
  if (out->size() == out->capacity()) return Error(ErrorCode::kFailed, "tree storage is full");
  pid_t host = STASIS_TRY(parent.build->ForkChild(c.pid(), c.exit_signal()));
  TreeProcess& child = out->emplace_back();
  child.proc = &c;
  child.host_pid = host;
  child.pidfd_slot = FreeFdSlot(c);
  child.origin = parent.build->origin_for_children();
  child.leader = std::make_unique<sys::Tracee>(STASIS_TRY(sys::Tracee::Adopt(host)));
  STASIS_TRY(child.leader->SetOptions(kTraceOptions));
  // It holds its parent's slot; move the restorer's pidfd to its own.
  std::unique_ptr<ForkedPuppet> p = STASIS_TRY(ForkedPuppet::Enter(*child.leader, child.origin));
  if (parent.pidfd_slot != child.pidfd_slot) {
    STASIS_TRY(p->Call("dup3", SYS_dup3, parent.pidfd_slot, child.pidfd_slot, 0));
    STASIS_TRY(p->Call("close", SYS_close, parent.pidfd_slot));
  }
  if (c.sid() == c.pid()) {
    STASIS_TRY(p->Call("setsid", SYS_setsid));
    STASIS_TRY(AfterSetsid(p->injector(), host, child.pidfd_slot, c, files));
  }
  STASIS_TRY(p->injector().Finish());
  return out->size() - 1;
}

Status MakeGroups(const std::vector<image::Process>& procs, std::vector<TreeProcess>* tree,
                  bool job_group_outside) {
  int job_group = procs[0].pgid();
  for (TreeProcess& t : *tree) {  // leaders first
    const image::Process& p = *t.proc;
    if (job_group_outside && p.pgid() == job_group) continue;
    if (p.pgid() == p.pid() && p.sid() != p.pid())
      STASIS_TRY(CallIn(t, "setpgid", SYS_setpgid, 0, 0));
  }
  std::map<int, std::vector<TreeProcess*>> leaderless;
  for (TreeProcess& t : *tree) {
    const image::Process& p = *t.proc;
    if (p.pgid() == p.pid() || p.pgid() == 0) continue;
    bool in_tree = Find(procs, p.pgid()) != nullptr;
    bool outside = !in_tree && p.pgid() == procs[0].pgid() && procs[0].pgid() != procs[0].pid();
    if (outside || (job_group_outside && p.pgid() == job_group)) continue;  // inherited
    if (!in_tree) {
      leaderless[p.pgid()].push_back(&t);
      continue;
    }
    STASIS_TRY_CTX(CallIn(t, "setpgid", SYS_setpgid, 0, p.pgid()),
                   fmt::format("pid {} joins group {}", p.pid(), p.pgid()));
  }
  for (auto& [pgid, members] : leaderless) {
    STASIS_TRY(MakeLeaderlessGroup(*members[0], pgid, members));
  }
  return Ok();
}

Status EndZombies(std::vector<TreeProcess>* tree) {
  for (TreeProcess& t : *tree) {
    if (!t.proc->zombie()) continue;
    // A parent that ignores SIGCHLD would have the kernel reap it at once.
    TreeProcess* parent = nullptr;
    for (TreeProcess& p : *tree) {
      if (p.proc->pid() == t.proc->ppid()) parent = &p;
    }
    if (parent && parent->build) STASIS_TRY(SetSigchld(*parent->build, {}));
    STASIS_TRY(Exit(t, t.origin, t.proc->exit_status()));
    if (parent && parent->build)
      STASIS_TRY(SetSigchld(*parent->build, ImageSigchld(*parent->proc)));
  }
  return Ok();
}

}  // namespace stasis::restore
