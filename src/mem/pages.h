// Page contents of an address space on the dump side: which pages to carry
// (pagemap: present or swapped private pages; anonymous zero pages elided;
// private file pages only once the task wrote them), and reading them out
// of the task into page records. The VMAs themselves are a kind
// (kinds/memory.h); this layer only moves their pages.
#pragma once

#include <sys/types.h>

#include <array>
#include <memory>
#include <vector>

#include "image/stream.h"
#include "process.pb.h"
#include "sys/result.h"

namespace stasis::mem {

struct PageStats {
  uint64_t pages_present = 0;  // pages pagemap reported for private VMAs
  uint64_t pages_written = 0;  // pages in page records
  uint64_t zero_pages = 0;     // anonymous all-zero pages elided
};

// Pages to carry, as runs of consecutive page addresses. Sets has_pages on
// the VMAs that have any.
struct PagePlan {
  struct Run {
    uint64_t addr;
    uint64_t npages;
    bool anon;      // an all-zero page may be elided
    bool readable;  // process_vm_readv works; else /proc/PID/mem
  };
  std::vector<Run> runs;
};
// A forked child may still share private pages with its parent: with the
// parent given, pages of a VMA both have (same range, private anonymous,
// neither DONTFORK nor WIPEONFORK) whose pagemap PFN is the parent's are left
// out, and the VMA is marked inherited (with what the child dropped to zap).
struct ParentView {
  pid_t host_pid;
  const image::Process* proc;
};
Result<PagePlan> PlanPages(pid_t pid, image::Process* proc, const ParentView* parent = nullptr);

// Where page contents come from instead of the task: a copy taken while the
// tree was frozen (precopy.h), so that the image is encoded after the tree
// runs again.
class PageSource {
 public:
  virtual ~PageSource() = default;
  // Fills out with the npages pages at addr, all of them planned pages.
  virtual Status Read(uint64_t addr, uint64_t npages, uint8_t* out) const = 0;
};

// Reads planned pages and writes them as page records. One per dump: it
// owns the read buffers, which every process's pages go through in turn
// (fresh buffers would cost a page fault and a kernel memset per page for
// each process of the tree).
class PageWriter {
 public:
  static constexpr size_t kDepth = 3;  // chunks in flight between reader and encoder

  PageWriter();
  // Reads the planned pages (from the task, or from source) and writes them
  // as page records of image_pid.
  Status Write(pid_t host_pid, uint32_t image_pid, const PagePlan& plan, image::Writer& writer,
               PageStats* stats, const PageSource* source = nullptr);

 private:
  std::array<std::unique_ptr<uint8_t[]>, kDepth> buffers_;
};

}  // namespace stasis::mem
