// Write tracking of another process's memory: a userfaultfd in asynchronous
// write-protect mode (UFFD_FEATURE_WP_ASYNC, 6.7+) marks the pages written
// since UFFDIO_WRITEPROTECT, and PAGEMAP_SCAN on /proc/PID/pagemap reads the
// marks (kernel-notes.md, "Dirty tracking with PAGEMAP_SCAN and WP_ASYNC").
// The uffd may be one stolen from the tracked process: every ioctl acts on
// the mm of the process that created it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sys/result.h"

namespace stasis::sys::uffd {

// The UFFDIO_API handshake (one-shot per uffd) with WP_ASYNC. The kernel
// adds WP_UNPOPULATED: WriteProtect of never-touched memory installs
// markers, allocating page tables, so callers protect present ranges only.
Status EnableWpAsync(int uffd);

// UFFDIO_REGISTER_MODE_WP of [start, end). False (not an error) when the
// kernel will not track that range: EBUSY (another uffd has it) or EINVAL
// (a VMA type it cannot register).
Result<bool> RegisterWp(int uffd, uint64_t start, uint64_t end);

// Clears the written marks of [start, end): writes after this are tracked.
Status WriteProtect(int uffd, uint64_t start, uint64_t end);

// Missing-mode lazy paging, for a restore that lets the tree run before its
// pages are in (kernel-notes.md, "userfaultfd"): the handshake with no
// feature, registration of a range, and resolving faults. The copy and
// zero-page calls also wake the faulting threads.
Status EnableMissing(int uffd);
Status RegisterMissing(int uffd, uint64_t start, uint64_t end);
Status Unregister(int uffd, uint64_t start, uint64_t end);
// UFFDIO_COPY of len bytes to [dst, dst + len). Stops at a page that is
// there already (EEXIST): returns the bytes copied before it (len when
// all). ESRCH once the mm is gone.
Result<uint64_t> Copy(int uffd, uint64_t dst, const void* src, uint64_t len);
// UFFDIO_ZEROPAGE of one range; if a page is there already, wakes the
// faulting threads instead (the fault raced with a copy).
Status ZeroPage(int uffd, uint64_t start, uint64_t end);

struct Range {
  uint64_t start;
  uint64_t end;
};

// The pages of [start, end) written since WriteProtect, as ranges, without
// re-protecting them. Fails with EPERM unless all of [start, end) is
// registered in WP_ASYNC mode (so a VMA replaced since is never taken for
// the one registered). Asks for at most batch ranges per ioctl.
Result<std::vector<Range>> WrittenRanges(int pagemap_fd, uint64_t start, uint64_t end,
                                         size_t batch = 512);

// The ranges of [start, end) whose pages are present (and not the shared
// zero page, which reads never need to copy), found by PAGEMAP_SCAN
// (which skips unpopulated page tables whole: a sparse VMA of terabytes,
// like a sanitizer's shadow, costs what its present pages cost).
Result<std::vector<Range>> PresentRanges(int pagemap_fd, uint64_t start, uint64_t end);

}  // namespace stasis::sys::uffd
