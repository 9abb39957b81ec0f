// What the two pre-copies (precopy.cc for --leave-running, precopy_rounds.cc
// for migration) share: finding the tree, tracking a task's writes and
// reading its pages. Not for use outside src/mem.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "sys/proc.h"
#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::mem {
class Tracker;
}  // namespace stasis::mem

namespace stasis::mem::precopy_internal {

inline constexpr uint64_t kPageBytes = 4096;

// The tree as it is now: the root and its descendants, parents first.
std::vector<pid_t> TreePids(pid_t root);

// A userfaultfd of pid's mm, in this process. Every thread is held while
// the task has the fd, so no fork can copy it into a child.
Result<sys::UniqueFd> StealUserfaultfd(pid_t pid);

// A VMA whose writes are tracked: private writable anonymous memory.
bool Trackable(const sys::proc::MapsEntry& m);

Status ReadPagemap(int fd, uint64_t addr, uint64_t npages, uint64_t* out);

struct Piece {
  uint64_t addr;
  uint64_t npages;
  uint8_t* dst;
};

// Reads the pieces out of the task (see the definition for why pages it
// shares are read through mem, not process_vm_readv).
Status ReadTaskPages(pid_t pid, int pagemap, int mem, const std::vector<Piece>& pieces);

// Precopy::Settle of a migration's tracking (precopy_rounds.cc).
void SettleTracker(Tracker& tracker);

}  // namespace stasis::mem::precopy_internal
