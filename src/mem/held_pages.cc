#include "mem/held_pages.h"

#include <fmt/format.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

namespace stasis::mem {

constexpr uint64_t kPage = image::kPageSize;
// image::PageRun counts pages in 32 bits: longer runs are given in pieces.
constexpr uint64_t kMaxGive = uint64_t{1} << 30;

void HeldPages::Forget(Runs& runs, uint64_t start, uint64_t end) {
  auto it = runs.upper_bound(start);
  if (it != runs.begin() && std::prev(it)->second.end > start) --it;
  while (it != runs.end() && it->first < end) {
    uint64_t s = it->first;
    Run r = std::move(it->second);
    it = runs.erase(it);
    bytes_ -= r.end - s;
    if (s < start) {
      runs[s] = {start, r.data, r.buffer};
      bytes_ += start - s;
    }
    if (r.end > end) {
      runs[end] = {r.end, r.data + (end - s), r.buffer};
      bytes_ += r.end - end;
      break;
    }
  }
}

namespace {

// Whole pages, left out of the address space of any process this one forks
// (MADV_DONTFORK): the restore forks the tree's namespace init while these
// are held, and the init would otherwise keep a copy-on-write reference to
// every one of them for the tree's whole life (a 1 GiB session then costs
// 2 GiB on the destination), besides the time to copy their page tables.
// The advice is undone before the pages go back to the allocator. It may
// fail (too many mappings); they are then only inherited, as any memory.
std::shared_ptr<uint8_t[]> AllocateHeld(uint64_t len) {
  void* p = std::aligned_alloc(kPage, len);
  if (p == nullptr) return nullptr;
  (void)madvise(p, len, MADV_DONTFORK);
  return std::shared_ptr<uint8_t[]>(static_cast<uint8_t*>(p), [len](uint8_t* q) {
    (void)madvise(q, len, MADV_DOFORK);
    std::free(q);
  });
}

}  // namespace

Status HeldPages::Add(uint32_t pid, uint64_t addr, uint64_t npages, const uint8_t* data) {
  if (npages == 0 || addr % kPage != 0 || addr + npages * kPage < addr) {
    return Error::Invalid(fmt::format("pid {}: held pages at {:#x} ({} pages) are not a page run",
                                      pid, addr, npages));
  }
  uint64_t len = npages * kPage;
  std::shared_ptr<uint8_t[]> copy = AllocateHeld(len);
  if (copy == nullptr) {
    return Error(ErrorCode::kFailed,
                 fmt::format("pid {}: no memory to hold {} pre-copied pages", pid, npages));
  }
  memcpy(copy.get(), data, len);
  std::lock_guard<std::mutex> lock(mu_);
  Runs& runs = procs_[pid];
  Forget(runs, addr, addr + len);
  runs[addr] = {addr + len, copy.get(), std::move(copy)};
  bytes_ += len;
  return Ok();
}

Status HeldPages::Give(uint32_t pid, uint64_t addr, uint64_t npages, PageStore& store) {
  uint64_t end = addr + npages * kPage;
  std::lock_guard<std::mutex> lock(mu_);
  auto found = procs_.find(pid);
  // Checked whole first: a refused range gives nothing.
  uint64_t at = addr;
  if (found != procs_.end()) {
    const Runs& runs = found->second;
    auto it = runs.upper_bound(at);
    if (it != runs.begin()) --it;
    for (; it != runs.end() && at < end && it->first <= at; ++it) {
      if (it->second.end > at) at = it->second.end;
    }
  }
  if (npages == 0 || at < end) {
    return Error::Corrupt(fmt::format(
        "pid {}: pages {:#x}-{:#x} are kept from the pre-copy, but page {:#x} was never received",
        pid, addr, end, std::min(at, end)));
  }
  Runs& runs = found->second;
  auto it = std::prev(runs.upper_bound(addr));
  for (; it != runs.end() && it->first < end; ++it) {
    uint64_t s = std::max(addr, it->first), e = std::min(end, it->second.end);
    for (uint64_t piece = s; piece < e; piece += kMaxGive * kPage) {
      uint64_t n = std::min(kMaxGive, (e - piece) / kPage);
      image::PageRun run{pid, piece, static_cast<uint32_t>(n),
                         it->second.data + (piece - it->first)};
      STASIS_TRY(store.Add(run, it->second.buffer));
    }
  }
  Forget(runs, addr, end);
  if (runs.empty()) procs_.erase(found);
  return Ok();
}

uint64_t HeldPages::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

void HeldPages::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  procs_.clear();
  bytes_ = 0;
}

}  // namespace stasis::mem
