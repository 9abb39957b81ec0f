// The address space: every VMA with its protection, sharing, backing file,
// offset and the madvise flags that matter (smaps VmFlags), plus the
// contents of private pages, which mem/ plans, reads and writes (pages.h,
// page_store.h).
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

// Restore side. Maps every VMA except the vdso block and [vsyscall], with
// write access added where pages must be written. local_fd gives the
// restorer's fd for a File id (the shmem objects SHMEM VMAs map).
using LocalFdLookup = std::function<Result<int>(uint64_t file_id)>;
Status MapVmas(RemoteTask& task, const image::Process& proc, const LocalFdLookup& local_fd);
// Final protections, madvise flags, mlock, anon names: after all pages
// (mem/page_store.h writes them).
Status FinishVmas(RemoteTask& task, const image::Process& proc);

bool IsVdsoBlock(const image::Vma& vma);

}  // namespace stasis::kinds::memory
