// Collects one seized task into an image::Process: everything but page
// contents, which checkpoint/dump.cc streams afterwards.
#pragma once

#include "kinds/memory.h"
#include "process.pb.h"
#include "sys/result.h"
#include "sys/tracee.h"

namespace stasis::checkpoint {

struct CollectedTask {
  image::Process proc;
  std::vector<image::File> files;
  kinds::memory::PagePlan pages;
};

// The task must already be seized; it stays stopped.
Result<CollectedTask> CollectTask(pid_t pid, sys::Tracee& tracee, image::Manifest* manifest);

// Refuses what cannot be dumped before the task is touched.
Status PrecheckTask(pid_t pid);

}  // namespace stasis::checkpoint
