// Pre-copy for `dump --leave-running`: the memory of the tree is copied
// while it runs, and only what it writes meanwhile is read again while it is
// frozen. The page records are encoded after the tree runs again, from the
// copies (PageCopies), so the freeze lasts as long as reading the dirty pages.
//
// Tracking: a userfaultfd created inside each process (one injected
// syscall), stolen with pidfd_getfd, in asynchronous write-protect mode over
// its private writable anonymous VMAs; PAGEMAP_SCAN tells the pages written
// since (sys/uffd.h). A copied page is used only if its VMA is the one
// registered (same range and offset, still registered), the page was not
// written and pagemap still shows the same physical page (so MADV_DONTNEED
// and refaulting, swapping, KSM or migration all count as changed).
// Everything else, and every process the pre-copy could not track (no
// userfaultfd, born during the pre-copy), is read while frozen.
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <vector>

#include "mem/pages.h"
#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::mem {

// Page contents of one process by address.
class PageCopies : public PageSource {
 public:
  struct Run {
    uint64_t addr;
    uint64_t npages;
    const uint8_t* data;
  };
  // data stays valid as long as buffer (shared between stores).
  void Add(uint64_t addr, uint64_t npages, const uint8_t* data,
           std::shared_ptr<const uint8_t[]> buffer);
  Status Read(uint64_t addr, uint64_t npages, uint8_t* out) const override;
  uint64_t pages() const { return pages_; }

 private:
  std::map<uint64_t, Run> runs_;  // by address, not overlapping
  std::vector<std::shared_ptr<const uint8_t[]>> buffers_;
  uint64_t pages_ = 0;
};

struct PrecopyStats {
  uint64_t processes_tracked = 0;
  uint64_t pages_copied = 0;  // while the tree ran
  uint64_t pages_kept = 0;    // of those, used in the image
  uint64_t pages_read = 0;    // read while frozen
};

class Precopy {
 public:
  // The tree runs. Never fails as a whole: a process that cannot be tracked
  // is left out, and its pages are read while frozen.
  static Precopy Start(pid_t root);
  Precopy(Precopy&&) noexcept;
  Precopy& operator=(Precopy&&) noexcept;
  ~Precopy();

  // The tree is frozen, before it is collected: works out which copies are
  // still good, then closes the userfaultfds (which unregisters the VMAs, so
  // the dump sees the memory as it was).
  void Settle();
  // The tree is frozen: the pages the plan wants, from the copies where
  // still good, the rest read from the task now.
  Result<std::unique_ptr<PageCopies>> Take(pid_t host_pid, const PagePlan& plan);

  const PrecopyStats& stats() const { return stats_; }

  struct Process;

 private:
  Precopy() = default;
  std::map<pid_t, std::unique_ptr<Process>> procs_;
  PrecopyStats stats_;
};

}  // namespace stasis::mem
