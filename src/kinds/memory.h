// The address space: every VMA with its protection, sharing, backing file,
// offset and the madvise flags that matter (smaps VmFlags), plus the
// contents of private pages (present or swapped, per pagemap). Anonymous
// zero pages are elided; private file pages are carried only when the task
// wrote them (pagemap says anonymous), like relocated .data.rel.ro.
//
// Shared memory objects (shared anonymous, unlinked tmpfs files, memfds)
// are carried once per tree by shmem.h. Refused at dump: private mappings
// of deleted files or memfds, SysV shm, hugetlbfs, device (VM_PFNMAP/VM_IO)
// mappings, userfaultfd-registered, sealed and shadow-stack VMAs.
#pragma once

#include <functional>
#include <map>
#include <string>

#include "image/stream.h"
#include "kinds/context.h"

namespace stasis::kinds::memory {

// Reads /proc/PID/smaps into proc->vmas, refusing what cannot be carried.
Status DumpVmas(pid_t pid, image::Process* proc);
// Turns one smaps entry into a Vma, or the error that refuses it.
Result<image::Vma> ClassifyVma(pid_t pid, const sys::proc::SmapsEntry& entry);

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
// Where WritePages takes page contents from instead of the task: a copy
// taken while the tree was frozen (checkpoint/precopy.h), so that the image
// is encoded after the tree runs again.
class PageSource {
 public:
  virtual ~PageSource() = default;
  // Fills out with the npages pages at addr, all of them planned pages.
  virtual Status Read(uint64_t addr, uint64_t npages, uint8_t* out) const = 0;
};
// Reads the planned pages (from the task, or from source) and writes them as
// page records.
Status WritePages(pid_t host_pid, uint32_t image_pid, const PagePlan& plan, image::Writer& writer,
                  PageStats* stats, const PageSource* source = nullptr);

// Restore side. Maps every VMA except the vdso block and [vsyscall], with
// write access added where pages must be written. local_fd gives the
// restorer's fd for a File id (the shmem objects SHMEM VMAs map).
using LocalFdLookup = std::function<Result<int>(uint64_t file_id)>;
Status MapVmas(RemoteTask& task, const image::Process& proc, const LocalFdLookup& local_fd);
// Writes one page record into the task.
Status RestorePageRun(pid_t host_pid, const image::Process& proc, const image::PageRun& run);
// Final protections, madvise flags, mlock, anon names: after all pages.
Status FinishVmas(RemoteTask& task, const image::Process& proc);

bool IsVdsoBlock(const image::Vma& vma);

}  // namespace stasis::kinds::memory
