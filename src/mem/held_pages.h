// The destination side of a migration's pre-copy: pages received in rounds
// while the source tree still runs, before any process of the tree exists
// here. The image that follows names, in kept records, which of them are
// still good; the restore then moves those into its page store (Give).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "mem/page_store.h"
#include "sys/result.h"

namespace stasis::mem {

// Pages by pid (as the tree sees it) and address. A later run replaces
// whatever an earlier one gave, whatever the overlap. Thread-safe: the
// migration's receiving thread adds while nothing else reads, but a
// failed migration may Clear from another.
class HeldPages {
 public:
  HeldPages() = default;
  HeldPages(const HeldPages&) = delete;
  HeldPages& operator=(const HeldPages&) = delete;

  // Copies npages pages from data.
  Status Add(uint32_t pid, uint64_t addr, uint64_t npages, const uint8_t* data);
  // Moves the pages of [addr, addr + npages*4096) of pid into store (which
  // must already Expect pid): the store takes the bytes without a copy, and
  // they are no longer held here. A page of the range that is not held is
  // kCorrupt (the source said we had it); then nothing is given.
  Status Give(uint32_t pid, uint64_t addr, uint64_t npages, PageStore& store);
  // Bytes of pages held.
  uint64_t bytes() const;
  void Clear();

 private:
  struct Run {
    uint64_t end;
    const uint8_t* data;
    std::shared_ptr<const uint8_t[]> buffer;  // shared by the pieces of one Add
  };
  using Runs = std::map<uint64_t, Run>;  // by start, disjoint

  // Drops what is held of [start, end), keeping the parts of runs around it.
  void Forget(Runs& runs, uint64_t start, uint64_t end);

  mutable std::mutex mu_;
  std::map<uint32_t, Runs> procs_;
  uint64_t bytes_ = 0;
};

}  // namespace stasis::mem
