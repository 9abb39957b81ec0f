#include "restore/tree.h"

#include <fmt/format.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <map>
#include <set>

#include "restore/puppet.h"
#include "sys/kernel_abi.h"

namespace stasis::restore {
namespace {

constexpr long kTraceOptions = PTRACE_O_EXITKILL | PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK;
// Below the puppet's stack pointer, past the red zone: room for clone args.
constexpr uint64_t kStackScratchOffset = 8192;

// Runs a few system calls in a pristine puppet (before BuildTask).
class Pristine {
 public:
  static Result<Pristine> Enter(sys::Tracee& tracee) {
    uint64_t ip = STASIS_TRY(PuppetSyscallIp(tracee.tid()));
    sys::Injector inj = STASIS_TRY(sys::Injector::Create(tracee, ip));
    uint64_t scratch = (inj.saved_regs().rsp - kStackScratchOffset) & ~uint64_t{15};
    return Pristine(std::move(inj), tracee.tid(), scratch);
  }
  sys::Injector& inj() { return inj_; }
  Result<uint64_t> Put(const void* data, size_t len, size_t offset) {
    STASIS_TRY(sys::WriteMemory(pid_, scratch_ + offset, data, len));
    return scratch_ + offset;
  }

 private:
  Pristine(sys::Injector inj, pid_t pid, uint64_t scratch)
      : inj_(std::move(inj)), pid_(pid), scratch_(scratch) {}
  sys::Injector inj_;
  pid_t pid_;
  uint64_t scratch_;
};

const image::Process* Find(const std::vector<image::Process>& procs, int pid) {
  for (const image::Process& p : procs) {
    if (p.pid() == pid) return &p;
  }
  return nullptr;
}

// Forks `child` from the puppet `parent` with its PID.
Result<pid_t> Fork(TreeProcess& parent, int pid, int exit_signal) {
  Pristine p = STASIS_TRY(Pristine::Enter(parent.tasks[0]));
  uint64_t tid_addr = STASIS_TRY(p.Put(&pid, sizeof(pid), 0));
  sys::abi::CloneArgs args = {};
  args.exit_signal = static_cast<uint64_t>(exit_signal);
  args.set_tid = tid_addr;
  args.set_tid_size = 1;
  uint64_t args_addr = STASIS_TRY(p.Put(&args, sizeof(args), 64));
  STASIS_TRY_CTX(p.inj().Call("clone3", sys::abi::kNrClone3, args_addr, sizeof(args)),
                 fmt::format("fork pid {} from pid {}", pid, parent.proc->pid()));
  if (p.inj().last_child() <= 0) return Error(ErrorCode::kFailed, "clone3 made no child we saw");
  STASIS_TRY(p.inj().Finish());
  return p.inj().last_child();
}

// A fresh child holds its parent's slot; move the restorer's pidfd to its own.
Status SetUpChild(TreeProcess& child, int parent_slot) {
  Pristine p = STASIS_TRY(Pristine::Enter(child.tasks[0]));
  if (parent_slot != child.pidfd_slot) {
    STASIS_TRY(p.inj().Call("dup3", SYS_dup3, parent_slot, child.pidfd_slot, 0));
    STASIS_TRY(p.inj().Call("close", SYS_close, parent_slot));
  }
  if (child.proc->sid() == child.proc->pid()) STASIS_TRY(p.inj().Call("setsid", SYS_setsid));
  return p.inj().Finish();
}

Status MakeChildren(TreeProcess& parent, const std::vector<image::Process>& procs,
                    std::vector<TreeProcess>* made) {
  for (const image::Process& c : procs) {
    if (c.ppid() != parent.proc->pid() || &c == procs.data()) continue;
    pid_t host = STASIS_TRY(Fork(parent, c.pid(), c.exit_signal()));
    TreeProcess child;
    child.proc = &c;
    child.host_pid = host;
    child.pidfd_slot = FreeFdSlot(c);
    child.tasks.push_back(STASIS_TRY(sys::Tracee::Adopt(host)));
    made->push_back(std::move(child));
    TreeProcess& placed = made->back();
    STASIS_TRY(placed.tasks[0].SetOptions(kTraceOptions));
    STASIS_TRY(SetUpChild(placed, parent.pidfd_slot));
  }
  return Ok();
}

Status Setpgid(TreeProcess& t, int pgid) {
  Pristine p = STASIS_TRY(Pristine::Enter(t.tasks[0]));
  STASIS_TRY_CTX(p.inj().Call("setpgid", SYS_setpgid, 0, pgid),
                 fmt::format("pid {} joins group {}", t.proc->pid(), pgid));
  return p.inj().Finish();
}

// Ends a puppet the way the dumped zombie ended, and consumes the exit
// notification we get as its tracer; the zombie stays for its parent.
Status Exit(TreeProcess& t, int status) {
  {
    Pristine p = STASIS_TRY(Pristine::Enter(t.tasks[0]));
    int sig = status & 0x7f;
    if (sig == 0) {
      (void)p.inj().Raw(SYS_exit_group, (status >> 8) & 0xff);
    } else {
      rlimit no_core = {0, 0};  // a core file is not part of the state
      uint64_t addr = STASIS_TRY(p.Put(&no_core, sizeof(no_core), 0));
      STASIS_TRY(p.inj().Call("prlimit64", SYS_prlimit64, 0, RLIMIT_CORE, addr, 0));
      sys::abi::KernelSigaction dfl = {};
      addr = STASIS_TRY(p.Put(&dfl, sizeof(dfl), 64));
      STASIS_TRY(p.inj().Call("rt_sigaction", SYS_rt_sigaction, sig, addr, 0, 8));
      STASIS_TRY(p.inj().Finish());
      if (ptrace(PTRACE_CONT, t.host_pid, nullptr, sig) < 0) return Error::Errno("ptrace(CONT)");
    }
  }
  int st;
  while (waitpid(t.host_pid, &st, __WALL) >= 0 && !WIFEXITED(st) && !WIFSIGNALED(st)) {
    ptrace(PTRACE_CONT, t.host_pid, nullptr, 0);
  }
  (void)t.tasks[0].Detach();
  t.tasks.clear();
  return Ok();
}

// A group whose leader is gone: a helper with the leader's PID, forked by a
// member, creates it; the member ignores SIGCHLD while the helper exits so
// the kernel reaps it at once (its real dispositions come later).
Result<TreeProcess> MakeGroupHelper(TreeProcess& member, int pgid) {
  TreeProcess helper;
  static const image::Process kHelperImage;
  helper.proc = &kHelperImage;
  helper.host_pid = STASIS_TRY(Fork(member, pgid, SIGCHLD));
  helper.tasks.push_back(STASIS_TRY(sys::Tracee::Adopt(helper.host_pid)));
  Pristine p = STASIS_TRY(Pristine::Enter(helper.tasks[0]));
  STASIS_TRY(p.inj().Call("setpgid", SYS_setpgid, 0, 0));
  STASIS_TRY(p.inj().Finish());
  return helper;
}

Status EndGroupHelper(TreeProcess& member, TreeProcess& helper) {
  Pristine p = STASIS_TRY(Pristine::Enter(member.tasks[0]));
  sys::abi::KernelSigaction ign = {reinterpret_cast<uint64_t>(SIG_IGN), 0, 0, 0};
  uint64_t addr = STASIS_TRY(p.Put(&ign, sizeof(ign), 0));
  STASIS_TRY(p.inj().Call("rt_sigaction(SIGCHLD)", SYS_rt_sigaction, SIGCHLD, addr, 0, 8));
  STASIS_TRY(Exit(helper, 0));
  return p.inj().Finish();
}

Status MakeGroups(const std::vector<image::Process>& procs, std::vector<TreeProcess>* made) {
  for (TreeProcess& t : *made) {  // leaders first
    const image::Process& p = *t.proc;
    if (p.pgid() == p.pid() && p.sid() != p.pid()) STASIS_TRY(Setpgid(t, 0));
  }
  std::map<int, TreeProcess> helpers;
  for (size_t i = 0; i < made->size(); ++i) {
    TreeProcess& t = (*made)[i];
    const image::Process& p = *t.proc;
    if (p.pgid() == p.pid() || p.pgid() == 0) continue;
    bool outside = Find(procs, p.pgid()) == nullptr && p.pgid() == procs[0].pgid() &&
                   procs[0].pgid() != procs[0].pid();
    if (outside) continue;  // the root's group lies outside the tree: inherited
    if (Find(procs, p.pgid()) == nullptr && !helpers.count(p.pgid())) {
      helpers.emplace(p.pgid(), STASIS_TRY(MakeGroupHelper(t, p.pgid())));
    }
    STASIS_TRY(Setpgid(t, p.pgid()));
  }
  for (auto& [pgid, helper] : helpers) {
    // Its parent is the member that forked it.
    for (TreeProcess& t : *made) {
      if (t.proc->pgid() == pgid) {
        STASIS_TRY(EndGroupHelper(t, helper));
        break;
      }
    }
  }
  return Ok();
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
    if (parent == nullptr || parent == &p || parent > &p) {
      return Error::Corrupt(fmt::format("pid {}: parent {} is not before it in the image", p.pid(),
                                        p.ppid()));
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

Status CreateTree(Spawner& spawner, const std::vector<image::Process>& procs,
                  std::vector<TreeProcess>* out) {
  out->reserve(procs.size() + 1);  // TreeProcess addresses must stay valid
  const image::Process& root = procs[0];
  TreeProcess first;
  first.proc = &root;
  first.pidfd_slot = FreeFdSlot(root);
  Puppet puppet = STASIS_TRY(spawner.CreatePuppet(root.pid(), first.pidfd_slot));
  first.host_pid = puppet.host_pid;
  first.tasks.push_back(STASIS_TRY(sys::Tracee::Seize(puppet.host_pid, true)));
  out->push_back(std::move(first));
  STASIS_TRY(out->front().tasks[0].SetOptions(kTraceOptions));
  if (root.sid() == root.pid()) {
    Pristine p = STASIS_TRY(Pristine::Enter(out->front().tasks[0]));
    STASIS_TRY(p.inj().Call("setsid", SYS_setsid));
    STASIS_TRY(p.inj().Finish());
  }
  for (size_t i = 0; i < out->size(); ++i) {  // breadth first: parents before children
    if (!(*out)[i].proc->zombie()) STASIS_TRY(MakeChildren((*out)[i], procs, out));
  }
  STASIS_TRY(MakeGroups(procs, out));
  for (TreeProcess& t : *out) {
    if (t.proc->zombie()) STASIS_TRY(Exit(t, t.proc->exit_status()));
  }
  return Ok();
}

}  // namespace stasis::restore
