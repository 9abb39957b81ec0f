// Collects one seized task into an image::Process: everything but its open
// files (files_dump.h, for the whole tree) and page contents, which
// checkpoint/dump.cc streams afterwards.
#pragma once

#include <string>

#include "mem/pages.h"
#include "process.pb.h"
#include "sys/proc.h"
#include "sys/result.h"
#include "sys/tracee.h"

namespace stasis::checkpoint {

struct CollectedTask {
  image::Process proc;
  mem::PagePlan pages;
};

// Every thread must already be seized; they stay stopped.
// With `parent` (a forked child's parent, already collected), pages still
// shared copy-on-write with it are left out (mem/pages.h).
Result<CollectedTask> CollectTask(pid_t pid, std::vector<sys::Tracee>& threads,
                                  image::Manifest* manifest,
                                  const mem::ParentView* parent = nullptr);

// pid, pgid and sid as the task's own PID namespace sees them (the last
// NSpid/NSpgid/NSsid), and the signal its parent gets at its exit.
void SetOwnIds(pid_t host_pid, const sys::proc::ProcStatus& status, const sys::proc::ProcStat& stat,
               image::Process* proc);

// Refuses what cannot be dumped before the task is touched. `session_netns`
// is the network namespace (its /proc/PID/ns/net link) of the isolated
// session being dumped, which its tasks may live in; "" for none.
Status PrecheckTask(pid_t pid, const std::string& session_netns);

}  // namespace stasis::checkpoint
