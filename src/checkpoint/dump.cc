#include "checkpoint/dump.h"

#include <sys/ptrace.h>

#include <fmt/format.h>
#include <signal.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <optional>

#include "checkpoint/clocks.h"
#include "checkpoint/files_dump.h"
#include "checkpoint/task_dump.h"
#include "checkpoint/tree.h"
#include "image/stream.h"
#include "kinds/pty.h"
#include "kinds/shmem.h"
#include "mem/lazy_ranges.h"
#include "mem/precopy.h"
#include "net/session_dump.h"
#include "net/session_image.h"
#include "pages.pb.h"
#include "sys/cgroup.h"
#include "sys/kernel_abi.h"
#include "sys/proc.h"

namespace stasis::checkpoint {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

void FillManifest(const image::Process& proc, image::Manifest* m) {
  m->set_format_major(1);
  m->set_format_minor(image::kFormatMinor);
  m->set_stasis_version(STASIS_VERSION);
  struct utsname u;
  if (uname(&u) == 0) {
    m->set_kernel_release(u.release);
    m->set_hostname(u.nodename);
  }
  m->set_created_unix_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count());
  m->set_root_pid(proc.pid());
  const std::string& xstate = proc.threads(0).xstate();
  size_t off = sys::abi::kXsaveSwBytesOffset;
  uint32_t magic = 0, size = 0;
  uint64_t features = 0;
  if (xstate.size() >= off + 20) {
    memcpy(&magic, xstate.data() + off, 4);
    memcpy(&features, xstate.data() + off + 8, 8);
    memcpy(&size, xstate.data() + off + 16, 4);
  }
  if (magic == sys::abi::kFpXstateMagic1) {
    m->set_xfeatures(features);
    m->set_xstate_size(size);
  }
}

struct TreeImage {
  std::vector<image::File> files;
  std::vector<kinds::ContentSource> shmem;
  std::vector<CollectedTask> tasks;   // parents before children
  std::vector<pid_t> host_pids;       // of tasks[i]
  std::vector<kinds::LateStep> late;  // run at the point of no return
};

// The point of no return: the image holds everything else and the tree will
// be killed. What the steps take (connections accepted from a listener's
// queue) cannot be given back, so a failure here is said as such.
Status WriteLate(std::vector<kinds::LateStep>& late, image::Writer& writer) {
  for (kinds::LateStep& step : late) {
    Result<image::LateRecord> record = step.run();
    if (!record.ok()) {
      return std::move(record).error().Context(fmt::format(
          "{}: at the dump's point of no return, reading {} (taken from the tree, which keeps "
          "running without them)",
          step.what, step.why));
    }
    STASIS_TRY(writer.WriteMessage(image::RecordType::kLate, record.value()));
  }
  return Ok();
}

// Everything before the page records.
Status WriteHead(TreeImage& tree, const image::Manifest& manifest, image::Writer& writer) {
  STASIS_TRY(writer.Begin());
  STASIS_TRY(writer.WriteMessage(image::RecordType::kManifest, manifest));
  for (const image::File& file : tree.files) {
    STASIS_TRY(writer.WriteMessage(image::RecordType::kFile, file));
  }
  STASIS_TRY(kinds::shmem::WriteContents(tree.shmem, writer));
  for (const CollectedTask& task : tree.tasks) {
    STASIS_TRY(writer.WriteMessage(image::RecordType::kProcess, task.proc));
  }
  return Ok();
}

uint64_t PlannedBytes(const mem::PagePlan& plan) {
  uint64_t pages = 0;
  for (const mem::PagePlan::Run& run : plan.runs) pages += run.npages;
  return pages * image::kPageSize;
}

// What a handoff writes in a process's slot instead of some of its page
// records: a kept or deferred record naming ranges.
Status WriteRanges(image::Writer& writer, image::RecordType type, uint32_t pid,
                   const std::vector<mem::Range>& ranges, uint64_t* pages) {
  if (ranges.empty()) return Ok();
  image::PageRanges msg;
  msg.set_pid(pid);
  for (const mem::Range& r : ranges) {
    image::PageRange* out = msg.add_ranges();
    out->set_addr(r.start);
    out->set_npages((r.end - r.start) / image::kPageSize);
    *pages += out->npages();
  }
  return writer.WriteMessage(type, msg);
}

// Post-copy: the rest of a plan split into what the destination can take
// after the tree runs there (pages its lazy pager serves: deferred) and
// what it needs before (page records now). A child's inherited VMAs are
// needed before: the restore fills the parent's pages there before it
// forks the child (mem/lazy_pager.h), long before the source sends a
// deferred page.
void SplitDeferrable(const image::Process& proc, const std::vector<const image::Process*>& children,
                     const mem::PagePlan& rest, mem::PagePlan* now,
                     std::vector<mem::Range>* later) {
  mem::RangeSet lazy;
  for (const mem::Range& r : mem::LazyRanges(proc)) lazy.Add(r.start, r.end);
  for (const image::Process* child : children) {
    for (const image::Vma& v : child->vmas()) {
      if (v.inherited()) lazy.Remove(v.start(), v.end());
    }
  }
  for (const mem::PagePlan::Run& run : rest.runs) {
    uint64_t end = run.addr + run.npages * image::kPageSize;
    for (const mem::Range& r : lazy.Within(run.addr, end)) {
      if (!later->empty() && later->back().end == r.start) {
        later->back().end = r.end;
      } else {
        later->push_back(r);
      }
    }
    for (const mem::Range& r : lazy.Gaps(run.addr, end)) {
      now->runs.push_back({r.start, (r.end - r.start) / image::kPageSize, run.anon, run.readable});
    }
  }
}

// What the tasks' pages add up to, beyond page records.
struct TaskPagesOut {
  const PageHandoff* handoff = nullptr;
  std::vector<DeferredPages>* deferred = nullptr;
  uint64_t kept_pages = 0;
  uint64_t deferred_pages = 0;
};

// The pages of one task: its page records (read from the task, or from
// source), and with a handoff its kept and deferred records after them.
Status WriteTaskPages(mem::PageWriter& page_writer, pid_t host_pid, const CollectedTask& task,
                      const std::vector<const image::Process*>& children, image::Writer& writer,
                      mem::PageStats* pages, const mem::PageSource* source, TaskPagesOut* out) {
  if (out->handoff == nullptr) {
    return page_writer.Write(host_pid, task.proc.pid(), task.pages, writer, pages, source);
  }
  mem::PlanSplit split = out->handoff->precopy->Split(host_pid, task.pages);
  uint32_t pid = static_cast<uint32_t>(task.proc.pid());
  mem::PagePlan now;
  std::vector<mem::Range> later;
  if (out->handoff->defer_rest) {
    SplitDeferrable(task.proc, children, split.rest, &now, &later);
  } else {
    now = std::move(split.rest);
  }
  STASIS_TRY(page_writer.Write(host_pid, pid, now, writer, pages));
  STASIS_TRY(WriteRanges(writer, image::RecordType::kKept, pid, split.kept, &out->kept_pages));
  STASIS_TRY(WriteRanges(writer, image::RecordType::kDeferred, pid, later, &out->deferred_pages));
  if (!later.empty()) out->deferred->push_back({host_pid, pid, std::move(later)});
  return Ok();
}

// The page records (read from the tasks, or from `stores` when given: one
// per task; with a handoff, only what the destination lacks), the late
// records and the trailer.
Status WriteTail(const sys::Env& env, TreeImage& tree, image::Writer& writer, DumpStats* stats,
                 const std::vector<std::unique_ptr<mem::PageCopies>>* stores = nullptr,
                 const PageHandoff* handoff = nullptr,
                 std::vector<DeferredPages>* deferred = nullptr) {
  uint64_t total = 0, done = 0;
  for (const CollectedTask& task : tree.tasks) {
    if (!task.proc.zombie()) total += PlannedBytes(task.pages);
  }
  env.Report("pages", 0, total);
  mem::PageStats pages;
  mem::PageWriter page_writer;
  TaskPagesOut out{handoff, deferred};
  for (size_t i = 0; i < tree.tasks.size(); ++i) {
    const CollectedTask& task = tree.tasks[i];
    if (task.proc.zombie()) continue;
    const mem::PageCopies* source = stores ? (*stores)[i].get() : nullptr;
    std::vector<const image::Process*> children;
    for (const CollectedTask& c : tree.tasks) {
      if (&c != &task && c.proc.ppid() == task.proc.pid()) children.push_back(&c.proc);
    }
    STASIS_TRY(WriteTaskPages(page_writer, tree.host_pids[i], task, children, writer, &pages,
                              source, &out));
    done += PlannedBytes(task.pages);
    env.Report("pages", done, total);
  }
  STASIS_TRY(WriteLate(tree.late, writer));
  image::Trailer trailer;
  trailer.set_records(writer.records());
  trailer.set_page_bytes(pages.pages_written * image::kPageSize);
  trailer.set_pages(pages.pages_written);
  trailer.set_kept_pages(out.kept_pages);
  trailer.set_deferred_pages(out.deferred_pages);
  STASIS_TRY(writer.WriteMessage(image::RecordType::kTrailer, trailer));
  STASIS_TRY(writer.Flush());
  stats->resident_bytes = pages.pages_present * image::kPageSize;
  if (handoff != nullptr) stats->resident_bytes = total;
  stats->pages_written = pages.pages_written;
  stats->zero_pages = pages.zero_pages;
  stats->handoff_pages_kept = out.kept_pages;
  stats->handoff_pages_deferred = out.deferred_pages;
  return Ok();
}

Result<CollectedTask> CollectZombie(pid_t host_pid) {
  CollectedTask task;
  task.proc.set_zombie(true);
  task.proc.set_exit_status(STASIS_TRY(ZombieExitStatus(host_pid)));
  std::string status = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/status", host_pid)));
  std::string stat = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/stat", host_pid)));
  SetOwnIds(host_pid, STASIS_TRY(sys::proc::ParseStatus(status)),
            STASIS_TRY(sys::proc::ParseStat(stat)), &task.proc);
  return task;
}

// Waits, as their tracer, until every killed thread has exited: by then the
// kernel has closed its files (exit_files comes before the notification).
void WaitGone(std::vector<sys::Tracee>& threads) {
  // Other threads first: a traced leader is reported after them.
  for (size_t i = threads.size(); i-- > 0;) {
    pid_t tid = threads[i].tid();
    for (int tries = 0; tries < 5000; ++tries) {
      int status = 0;
      pid_t r = waitpid(tid, &status, __WALL | WNOHANG);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 || (r == tid && (WIFEXITED(status) || WIFSIGNALED(status)))) break;
      if (r == 0) usleep(1000);
    }
  }
}

// Depth-first preorder: the order restore builds the tree in (a child is
// forked from its parent in the middle of the parent's restore).
std::vector<TreeTask*> DepthFirst(std::vector<TreeTask>& frozen) {
  std::vector<TreeTask*> out;
  std::vector<TreeTask*> stack = {&frozen[0]};
  while (!stack.empty()) {
    TreeTask* t = stack.back();
    stack.pop_back();
    out.push_back(t);
    for (auto it = frozen.rbegin(); it != frozen.rend(); ++it) {
      if (it->parent_host_pid == t->host_pid) stack.push_back(&*it);
    }
  }
  return out;
}

Result<TreeImage> CollectTree(std::vector<TreeTask>& frozen, image::Manifest* manifest,
                              std::vector<std::function<void()>>* undo_if_kept,
                              const kinds::DumpPolicy& policy, const FlowLocking& locking) {
  TreeImage tree;
  std::map<pid_t, pid_t> own_pid;  // host pid -> pid in the tree's namespace
  std::map<pid_t, size_t> index;   // host pid -> tree.tasks index
  std::vector<TreeFdsInput> fd_tasks;
  std::vector<TreeTask*> order = DepthFirst(frozen);
  tree.tasks.reserve(order.size());
  for (TreeTask* tp : order) {
    TreeTask& t = *tp;
    mem::ParentView parent_view;
    const mem::ParentView* parent = nullptr;
    auto p = index.find(t.parent_host_pid);
    if (p != index.end() && !tree.tasks[p->second].proc.zombie()) {
      parent_view = {t.parent_host_pid, &tree.tasks[p->second].proc};
      parent = &parent_view;
    }
    CollectedTask task = t.zombie
                             ? STASIS_TRY(CollectZombie(t.host_pid))
                             : STASIS_TRY(CollectTask(t.host_pid, t.threads, manifest, parent));
    own_pid[t.host_pid] = task.proc.pid();
    task.proc.set_ppid(t.parent_host_pid == 0 ? 0 : own_pid.at(t.parent_host_pid));
    index[t.host_pid] = tree.tasks.size();
    tree.tasks.push_back(std::move(task));
    tree.host_pids.push_back(t.host_pid);
  }
  for (size_t i = 0; i < order.size(); ++i) {
    if (!order[i]->zombie) fd_tasks.push_back({order[i]->host_pid, &tree.tasks[i].proc});
  }
  STASIS_TRY(CollectTreeFiles(fd_tasks, &tree.files, &tree.shmem, undo_if_kept, &tree.late, policy,
                              locking));
  std::vector<kinds::shmem::TaskVmas> vma_tasks;
  for (const TreeFdsInput& t : fd_tasks) vma_tasks.push_back({t.host_pid, t.proc});
  uint64_t next_id = tree.files.size();
  STASIS_TRY(kinds::shmem::CollectObjects(vma_tasks, &next_id, &tree.files, &tree.shmem));
  return tree;
}

// Aborts the sink unless the dump committed it: whatever fails, nothing
// written passes for an image.
class CommitOrAbort {
 public:
  explicit CommitOrAbort(image::ImageSink& sink) : sink_(sink) {}
  ~CommitOrAbort() {
    if (!committed_) sink_.Abort();
  }
  Status Commit() {
    STASIS_TRY_CTX(sink_.Commit(), "commit image");
    committed_ = true;
    return Ok();
  }

 private:
  image::ImageSink& sink_;
  bool committed_ = false;
};

// What every dump needs from the kernel (sys/features.cc names them).
Status CheckFeatures(const sys::KernelFeatures& features) {
  return features.Require({"CAP_SYS_PTRACE", "pidfd_open", "pidfd_getfd", "kcmp",
                           "process_vm_readv", "/proc/PID/map_files", "yama ptrace_scope"},
                          "dump");
}

// With --leave-running the tree runs again as soon as its pages are in
// memory: most were copied while it ran (precopy.h), only those written
// since are read while it is frozen; the page records are encoded after.
Result<std::vector<std::unique_ptr<mem::PageCopies>>> TakePages(TreeImage& tree,
                                                                mem::Precopy& precopy) {
  std::vector<std::unique_ptr<mem::PageCopies>> stores(tree.tasks.size());
  for (size_t i = 0; i < tree.tasks.size(); ++i) {
    if (tree.tasks[i].proc.zombie()) continue;
    stores[i] = STASIS_TRY(precopy.Take(tree.host_pids[i], tree.tasks[i].pages));
  }
  return stores;
}

Status KillAndWait(std::vector<TreeTask>& frozen) {
  for (const TreeTask& t : frozen) {
    if (!t.zombie && kill(t.host_pid, SIGKILL) < 0 && errno != ESRCH) {
      return Error::Errno(fmt::format("kill pid {} after dump", t.host_pid));
    }
  }
  // Return only once they are gone: a restore that follows at once must
  // find their ports and files released.
  for (TreeTask& t : frozen) WaitGone(t.threads);
  return Ok();
}

// Freezes the tree: all at once through its cgroup when it has one.
Result<std::vector<TreeTask>> Freeze(const DumpOptions& options, const std::string& session_netns) {
  if (options.freeze_cgroup.empty()) return FreezeTree(options.pid, session_netns);
  // The v2 freezer stops every task at once; ptrace works on frozen tasks
  // (kernel-notes.md), and once seized they stay stopped after the thaw.
  sys::Cgroup cgroup = STASIS_TRY(sys::Cgroup::Open(options.freeze_cgroup));
  sys::FrozenCgroup freeze = STASIS_TRY(sys::FrozenCgroup::Freeze(cgroup));
  std::vector<TreeTask> frozen = STASIS_TRY(FreezeTree(options.pid, session_netns));
  STASIS_TRY(freeze.Thaw());
  return frozen;
}

// The manifest's fields beyond the tree's own.
Status CompleteManifest(const DumpOptions& options, const TreeImage& tree,
                        const std::optional<net::SessionNetDump>& net, image::Manifest* manifest) {
  FillManifest(tree.tasks[0].proc, manifest);
  STASIS_TRY(RecordClocks(tree.host_pids, manifest->mutable_clocks()));
  if (options.policy.shell_job) {
    *manifest->mutable_shell_job() =
        STASIS_TRY_CTX(kinds::pty::DumpShellJob(options.pid, tree.host_pids, tree.files), "dump");
  }
  manifest->set_session_name(options.session_name);
  for (const std::string& arg : options.session_command) manifest->add_session_command(arg);
  if (options.session_net) {
    net::NetToProto(*options.session_net, manifest->mutable_net());
    net::NeighboursToProto(net->neighbours(), manifest->mutable_net());
  }
  return Ok();
}

// With --leave-running the tree goes on: a late step would take from it
// what it still needs (connections accept()ed from a listener's queue).
Status CheckLeaveRunning(const TreeImage& tree) {
  if (tree.late.empty()) return Ok();
  const kinds::LateStep& step = tree.late.front();
  return Error::Unsupported(fmt::format(
      "dump: {}: {}; reading them needs accept(), which takes them from the program, and "
      "--leave-running keeps it running (they cannot be put back into the queue); accept "
      "them first, or dump without --leave-running",
      step.what, step.why));
}

// The tree, collected from inside the session's namespace when there is one
// (sock_diag sees only the sockets of the caller's); the calling thread is
// back in its own when it returns.
Result<TreeImage> CollectTreeIn(const std::optional<net::SessionNetDump>& net,
                                std::vector<TreeTask>& frozen, image::Manifest* manifest,
                                std::vector<std::function<void()>>* undo_if_kept,
                                const kinds::DumpPolicy& policy, Logger& log) {
  FlowLocking locking{log, net.has_value()};
  if (!net) return CollectTree(frozen, manifest, undo_if_kept, policy, locking);
  sys::ScopedNetns inside = STASIS_TRY(net->Enter());
  TreeImage tree = STASIS_TRY(CollectTree(frozen, manifest, undo_if_kept, policy, locking));
  STASIS_TRY_CTX(inside.Leave(), "leave the session's network");
  return tree;
}

}  // namespace

Result<DumpStats> Dump(const sys::Env& env, const DumpOptions& options, image::ImageSink& sink) {
  Clock::time_point start = Clock::now();
  CommitOrAbort image(sink);
  DumpStats stats;
  pid_t pid = options.pid;
  if (pid == getpid()) return Error::Invalid("stasis cannot dump itself");
  if (options.handoff != nullptr && (options.leave_running || options.handoff->precopy == nullptr ||
                                     !options.handoff->precopy->tracking())) {
    return Error::Invalid(
        "dump: a migration's page handoff needs a tracking pre-copy, and the tree is killed "
        "after it (not with --leave-running)");
  }
  STASIS_TRY(CheckFeatures(env.features));
  std::optional<net::SessionNetDump> net;
  if (options.session_net) {
    net.emplace(STASIS_TRY(
        net::SessionNetDump::Begin(options.session_init_pid, pid, *options.session_net, env.log)));
  }
  // The tasks of an isolated session live in its network namespace.
  std::string session_netns = net ? net->netns_name() : "";
  STASIS_TRY(PrecheckTree(pid, session_netns));
  std::optional<mem::Precopy> precopy;
  if (options.leave_running) {
    if (env.features.Has("uffd WP_ASYNC")) {
      precopy = mem::Precopy::Start(pid);
    } else {
      env.log.Info(
          "no uffd WP_ASYNC on this kernel: --leave-running reads every page while the tree is "
          "frozen");
    }
  }

  env.Report("freeze");
  Clock::time_point frozen_at = Clock::now();
  std::vector<TreeTask> frozen = STASIS_TRY(Freeze(options, session_netns));
  if (precopy) precopy->Settle();
  if (options.handoff != nullptr) options.handoff->precopy->Settle();
  if (net) STASIS_TRY(net->Lock());
  image::Manifest manifest;
  // What kinds changed in the tree for the dump (a socket put in repair
  // mode) is put back unless the tree is killed: on every error path, and
  // with --leave-running before the tree runs again.
  struct UndoIfKept {
    std::vector<std::function<void()>> steps;
    // Last change first: the sockets leave repair mode before the network
    // lock that was taken ahead of them is lifted.
    void Run() {
      for (auto it = steps.rbegin(); it != steps.rend(); ++it) (*it)();
      steps.clear();
    }
    ~UndoIfKept() { Run(); }
  } undo;
  env.Report("collect");
  TreeImage tree = STASIS_TRY_CTX(
      CollectTreeIn(net, frozen, &manifest, &undo.steps, options.policy, env.log), "dump");
  if (options.leave_running) STASIS_TRY(CheckLeaveRunning(tree));
  STASIS_TRY(CompleteManifest(options, tree, net, &manifest));
  env.Report("write");
  image::Writer writer(sink);
  STASIS_TRY_CTX(WriteHead(tree, manifest, writer), "write image");
  // With a pre-copy the page records are encoded after the tree runs
  // again, from the copies; else they are read now, while it is frozen.
  std::vector<std::unique_ptr<mem::PageCopies>> stores;
  if (precopy) {
    stores = STASIS_TRY_CTX(TakePages(tree, *precopy), "dump: read pages");
  } else {
    std::vector<DeferredPages> deferred;
    STASIS_TRY_CTX(WriteTail(env, tree, writer, &stats, nullptr, options.handoff, &deferred),
                   "write image");
    if (options.handoff != nullptr && options.on_deferred) {
      STASIS_TRY(options.on_deferred(deferred));
    }
  }
  env.Report("release");
  if (options.leave_running) {
    // Put back before the tree runs again: a socket still in repair mode
    // answers recv() with EINVAL.
    undo.Run();
    if (net) STASIS_TRY(net->Unlock());
  } else {
    if (options.arm_exit_kill != nullptr) {
      *options.arm_exit_kill = [&frozen]() -> Status {
        for (const TreeTask& t : frozen) {
          for (const sys::Tracee& thread : t.threads) {
            STASIS_TRY(thread.SetOptions(PTRACE_O_EXITKILL));
          }
        }
        return Ok();
      };
    }
    STASIS_TRY(image.Commit());
    undo.steps.clear();
    // A handoff's tree runs on the destination now: nothing here will take
    // what its link's keeper holds.
    if (net && options.handoff != nullptr) {
      net->MarkMoved();
    } else if (net) {
      net->MarkKilled();
    }
    STASIS_TRY(KillAndWait(frozen));
  }
  for (TreeTask& t : frozen) {
    for (sys::Tracee& thread : t.threads) STASIS_TRY(thread.Detach());
  }
  stats.frozen_ms = MsSince(frozen_at);
  if (precopy) {
    STASIS_TRY_CTX(WriteTail(env, tree, writer, &stats, &stores), "write image");
    stores.clear();
    stats.precopy_pages_kept = precopy->stats().pages_kept;
    stats.precopy_pages_read = precopy->stats().pages_read;
  }
  if (options.leave_running) STASIS_TRY(image.Commit());
  stats.image_bytes = sink.bytes();
  stats.total_ms = MsSince(start);
  stats.processes = tree.tasks.size();
  return stats;
}

}  // namespace stasis::checkpoint
