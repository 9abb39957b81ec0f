// Turns a seized puppet into a dumped task, step by step, with injected
// system calls, in three phases so a tree can be built around them:
//   1. memory: the address space (Start*), then its pages come through the
//      page store, then final protections and the mm fields (FinishMemory);
//      then the task's children are forked from it (they inherit the pages
//      they still shared copy-on-write at dump time);
//   2. attributes: fds, cwd/root/umask, limits, signals, threads;
//   3. finish: credentials (last: they may drop what every other step
//      needs), then the final registers. The task stays stopped; detaching
//      releases it.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>

#include "image/stream.h"
#include "kinds/context.h"
#include "mem/lazy_pager.h"
#include "mem/page_store.h"
#include "restore/spawn.h"
#include "sys/log.h"

namespace stasis::restore {

// The files of the image, created in the restorer, by file id.
using LocalFiles = std::map<uint64_t, sys::UniqueFd>;

struct PuppetPlan {
  const image::Manifest* manifest;
  const image::Process* proc;
  const LocalFiles* files;
  int pidfd_slot;  // where the puppet holds the restorer's pidfd
  const std::map<uint64_t, const image::File*>* image_files;  // by id, for kind hooks
  Logger* log;                                                // the restore's (sys/env.h)
  // restore --lazy: the pager that serves the task's private anonymous
  // pages on fault (mem/lazy_pager.h); null to write every page before it runs.
  mem::LazyPager* lazy = nullptr;
};

// Where a forked child starts from: its parent's image and the parent's
// scratch page (with a `syscall` in it), inherited at fork.
struct ForkOrigin {
  const image::Process* parent;
  uint64_t parent_scratch;
};

class TaskBuild {
 public:
  // Phase 1 for a pristine puppet (the root): its VMAs mapped, and
  // attached to the store, which writes its pages from now on.
  static Result<std::unique_ptr<TaskBuild>> StartFresh(sys::Tracee& leader, pid_t host_pid,
                                                       const PuppetPlan& plan,
                                                       mem::PageStore& pages);
  // Phase 1 for a task forked from a TaskBuild in phase 1 or later.
  static Result<std::unique_ptr<TaskBuild>> StartForked(sys::Tracee& leader, pid_t host_pid,
                                                        const PuppetPlan& plan,
                                                        const ForkOrigin& origin,
                                                        mem::PageStore& pages);
  // The end of phase 1, once the store received every page of the task:
  // (lazy: the pages outside the ranges served on fault are written now)
  // final protections, mm fields.
  Status FinishMemory();
  // Lazy: makes the ranges a child about to be forked inherits complete
  // (a registration is not inherited, and a page written into this task
  // after the fork would not reach the child).
  Status CompleteInherited(const image::Process& child);
  ~TaskBuild();

  // Forks a child with this PID; it stops, auto-attached (PTRACE_O_TRACEFORK).
  Result<pid_t> ForkChild(int pid, int exit_signal);
  ForkOrigin origin_for_children() const { return {plan_.proc, scratch_}; }
  // Runs one system call in the task (setpgid and the like).
  Result<long> Call(const char* name, long nr, uint64_t a1 = 0, uint64_t a2 = 0, uint64_t a3 = 0,
                    uint64_t a4 = 0);
  kinds::RemoteTask& task() { return *task_; }

  // Phase 2. Threads made here are appended to *threads.
  Status RestoreAttributes(std::vector<sys::Tracee>* threads);
  // After the whole tree exists: FdKind::after_tree for the Files in `ids`.
  Status RunAfterTree(const std::vector<uint64_t>& ids);
  // Phase 3.
  Status Finish();

 private:
  TaskBuild(sys::Tracee& leader, pid_t host_pid, const PuppetPlan& plan, sys::Injector inj);
  Status MapMemory(mem::PageStore& pages, bool vdso_in_place);
  Status ServeLazily();

  sys::Tracee& leader_;
  pid_t host_pid_;
  PuppetPlan plan_;
  sys::Injector inj_;
  uint64_t scratch_ = 0;
  std::unique_ptr<kinds::RemoteTask> task_;
  mem::PageStore* pages_ = nullptr;
  std::vector<mem::Range> lazy_ranges_;
  std::vector<sys::Tracee*> thread_tracees_;
};

// Runs system calls in a puppet forked from a TaskBuild that has no build
// of its own (a zombie, a group helper): through the inherited scratch page.
class ForkedPuppet {
 public:
  static Result<std::unique_ptr<ForkedPuppet>> Enter(sys::Tracee& tracee, const ForkOrigin& origin);
  ForkedPuppet(const ForkedPuppet&) = delete;
  ForkedPuppet& operator=(const ForkedPuppet&) = delete;
  Result<long> Call(const char* name, long nr, uint64_t a1 = 0, uint64_t a2 = 0, uint64_t a3 = 0,
                    uint64_t a4 = 0);
  kinds::RemoteTask& task() { return task_; }
  sys::Injector& injector() { return inj_; }

 private:
  ForkedPuppet(sys::Injector inj, pid_t pid, uint64_t scratch);
  sys::Injector inj_;
  kinds::RemoteTask task_;
};

// Address of a `syscall` instruction in the puppet's current [vdso].
Result<uint64_t> PuppetSyscallIp(pid_t host_pid);

// The lowest fd number the image leaves free: where the puppet keeps the
// restorer's pidfd while it pulls its fds in.
int FreeFdSlot(const image::Process& proc);

// Installs the per-thread state of a new thread made by clone3 (below).
Status CreateThreads(kinds::RemoteTask& task, uint64_t scratch, const image::Process& proc,
                     std::vector<sys::Tracee>* threads);

}  // namespace stasis::restore
