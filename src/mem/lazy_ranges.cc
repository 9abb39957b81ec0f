#include "mem/lazy_ranges.h"

#include "image/stream.h"

namespace stasis::mem {

std::vector<Range> LazyRanges(const image::Process& proc) {
  constexpr uint64_t kPage = image::kPageSize;
  std::vector<Range> out;
  for (const image::Vma& v : proc.vmas()) {
    // MADV_HUGEPAGE VMAs too: restore/puppet.cc keeps a huge page from
    // coming in over pages still to come.
    if (v.kind() == image::Vma::ANON && !v.shared() && v.has_pages() && !v.inherited() &&
        v.end() - v.start() > 2 * kPage) {
      out.push_back({v.start() + kPage, v.end() - kPage});
    }
  }
  return out;
}

}  // namespace stasis::mem
