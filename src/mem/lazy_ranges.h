// Where a lazy restore serves pages on fault (userfaultfd missing mode)
// after the tree runs; every other page is written before it runs. Shared
// by the restore (restore/puppet.cc registers these ranges) and a
// migration's dump (a deferred page must be one the destination can serve
// after the switch-over, or the restore would wait for it before Ready).
#pragma once

#include <vector>

#include "mem/ranges.h"
#include "process.pb.h"

namespace stasis::mem {

// Private anonymous VMAs with pages of their own: missing mode takes
// nothing else (file mappings), and an inherited VMA already holds its
// parent's pages, which a copy could not replace (EEXIST). Each without
// its first and last page, which are written before the tree runs:
// unregistering merges a VMA with its neighbours when their flags become
// equal, and the dumped layout had them apart; split off inside the VMA,
// the registered part can only merge back into its own VMA.
std::vector<Range> LazyRanges(const image::Process& proc);

}  // namespace stasis::mem
