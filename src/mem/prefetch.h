// The pages that travel with a fault in post-copy, on both sides: the
// destination's pager copies the held ones around a fault (lazy_pager.h)
// and the source's page server sends the unsent ones around a requested
// page (page_server.h). A fault's round trip, not its bytes, is what costs
// (kernel-notes.md measured 4 KiB faults at 0.1-0.2 GB/s), and a thread
// that touched a page usually goes on upward: more after than before.
#pragma once

#include <algorithm>
#include <cstdint>

#include "mem/ranges.h"

namespace stasis::mem {

inline constexpr uint64_t kPrefetchBefore = 16 * 1024;
inline constexpr uint64_t kPrefetchAfter = 64 * 1024;

// [page - kPrefetchBefore, page + kPrefetchAfter), the faulting page
// included, clipped to within.
inline Range PrefetchWindow(uint64_t page, Range within) {
  uint64_t start = page >= kPrefetchBefore ? page - kPrefetchBefore : 0;
  return {std::max(start, within.start), std::min(page + kPrefetchAfter, within.end)};
}

}  // namespace stasis::mem
