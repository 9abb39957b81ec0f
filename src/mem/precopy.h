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
//
// A migration uses the same tracking without keeping copies: the pages go
// to the destination in rounds (StartTracking, SendRound), and at the
// freeze Split tells which of them it still holds good copies of
// (precopy_rounds.cc; the dump writes those as kept records).
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "mem/pages.h"
#include "mem/ranges.h"
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

// One pre-copy round of a migration (Precopy::SendRound).
struct RoundStats {
  uint64_t pages_sent = 0;
  uint64_t dirty_pages = 0;  // found written since the previous round
  uint64_t bytes = 0;        // page bytes sent
  double ms = 0;
};

// A page run going to a migration's destination: pid as the tree sees it.
using SendRun =
    std::function<Status(uint32_t pid, uint64_t addr, uint64_t npages, const uint8_t* data)>;

// A process's dump plan at the freeze, split into the pages whose last sent
// copy is still good (the destination holds them) and the rest.
struct PlanSplit {
  std::vector<Range> kept;
  PagePlan rest;
};

class Tracker;  // precopy_rounds.cc
struct TrackerDeleter {
  void operator()(Tracker* t) const;
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

  // Migration (precopy_rounds.cc): the tree runs; its writes are tracked,
  // and pages are sent in rounds (SendRound), not kept here: this process
  // holds only what it needs to judge at the freeze whether the copy sent
  // is still good (the physical page each sent page was, and the VMAs it
  // registered). Never fails as a whole: a process that cannot be tracked
  // is left out, and every page of it goes with the image.
  static Precopy StartTracking(pid_t root);
  // One round while the tree runs: the first sends every present private
  // page of the tracked VMAs; each next one the pages written since the
  // previous round, and every page of a VMA (or a process) that appeared
  // since. Fails only when send fails.
  Result<RoundStats> SendRound(const SendRun& send);
  // Pages written since the last round, counted without sending or
  // re-protecting them (for the convergence estimate).
  Result<uint64_t> DirtyPages();
  // After Settle, the tree frozen: the pages of plan whose last sent copy
  // is still good (not written since it was sent, same physical page, same
  // VMA), and the rest of plan. A page not in plan is never kept.
  PlanSplit Split(pid_t host_pid, const PagePlan& plan) const;
  bool tracking() const { return tracker_ != nullptr; }

  struct Process;

 private:
  Precopy();
  std::map<pid_t, std::unique_ptr<Process>> procs_;
  PrecopyStats stats_;
  std::unique_ptr<Tracker, TrackerDeleter> tracker_;  // migration only
};

}  // namespace stasis::mem
