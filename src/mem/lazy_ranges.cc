#include "mem/lazy_ranges.h"

#include <algorithm>

#include "image/stream.h"

namespace stasis::mem {

std::vector<Range> LazyRanges(const image::Process& proc) {
  constexpr uint64_t kPage = image::kPageSize;
  std::vector<Range> out;
  for (const image::Vma& v : proc.vmas()) {
    // MADV_HUGEPAGE: the first write would bring a whole huge page in,
    // over pages still to come.
    bool huge = std::find(v.vm_flags().begin(), v.vm_flags().end(), "hg") != v.vm_flags().end();
    if (v.kind() == image::Vma::ANON && !v.shared() && v.has_pages() && !v.inherited() && !huge &&
        v.end() - v.start() > 2 * kPage) {
      out.push_back({v.start() + kPage, v.end() - kPage});
    }
  }
  return out;
}

}  // namespace stasis::mem
