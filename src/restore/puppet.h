// Turns a seized puppet into the dumped task, step by step, with injected
// system calls. The order matters and is explained where it is chosen in
// puppet.cc.
#pragma once

#include <functional>
#include <map>

#include "image/stream.h"
#include "kinds/context.h"
#include "restore/spawn.h"

namespace stasis::restore {

// The files of the image, created in the restorer, by file id.
using LocalFiles = std::map<uint64_t, sys::UniqueFd>;

// Feeds the page records to the puppet; returns once the trailer is read.
using PageFeeder = std::function<Status(const image::Process& proc)>;

struct PuppetPlan {
  const image::Manifest* manifest;
  const image::Process* proc;
  const LocalFiles* files;
  int pidfd_slot;  // where the puppet holds the restorer's pidfd
};

// Builds the task in `leader` (the seized puppet) and creates its other
// threads, appended to *threads as they are made (so a caller can reap them
// on failure). On success every thread has its final registers and is still
// stopped; detaching them releases the task.
Status BuildTask(sys::Tracee& leader, pid_t host_pid, const PuppetPlan& plan,
                 const PageFeeder& feed_pages, std::vector<sys::Tracee>* threads);

// Address of a `syscall` instruction in the puppet's current [vdso].
Result<uint64_t> PuppetSyscallIp(pid_t host_pid);

// The lowest fd number the image leaves free: where the puppet keeps the
// restorer's pidfd while it pulls its fds in.
int FreeFdSlot(const image::Process& proc);

}  // namespace stasis::restore
