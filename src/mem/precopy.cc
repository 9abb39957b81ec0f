#include "mem/precopy.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "image/stream.h"
#include "mem/precopy_internal.h"
#include "sys/pagemap.h"
#include "sys/proc.h"
#include "sys/uffd.h"

namespace stasis::mem {

constexpr uint64_t kPage = image::kPageSize;
constexpr uint64_t kPmPresent = sys::pagemap::kPresent;
constexpr uint64_t kPmPfnMask = sys::pagemap::kPfnMask;
constexpr uint64_t kPagemapBatch = 65536;  // entries per pread: 256 MiB of address space

// Pages copied from one registered VMA, with the physical page each was.
struct PageCopy {
  uint64_t addr;
  uint64_t npages;
  const uint8_t* data;
  std::shared_ptr<const uint8_t[]> buffer;
  std::vector<uint64_t> pfn;
  std::vector<bool> good;
};

struct Precopy::Process {
  pid_t pid;
  sys::UniqueFd uffd;
  sys::UniqueFd pagemap;  // of the mm the uffd tracks (opened before any exec)
  sys::UniqueFd mem;
  struct Vma {
    uint64_t start, end, pgoff;
  };
  std::vector<Vma> vmas;
  std::vector<PageCopy> copies;  // by address
  bool settled = false;
};

namespace {

using namespace precopy_internal;

// Copies the present pages of [start, end) (a batch of one VMA). Pages the
// task unmaps meanwhile make the copy short: then nothing of the batch is
// kept, and it is read while frozen.
Status CopyBatch(Precopy::Process& p, uint64_t start, uint64_t end, uint64_t* budget) {
  uint64_t npages = (end - start) / kPage;
  std::vector<uint64_t> entries(npages);
  STASIS_TRY(ReadPagemap(p.pagemap.get(), start, npages, entries.data()));
  std::vector<PageCopy> runs;
  uint64_t total = 0;
  for (uint64_t i = 0; i < npages; ++i) {
    if (!(entries[i] & kPmPresent)) continue;
    uint64_t pfn = entries[i] & kPmPfnMask;
    if (pfn == 0) return Error::Unsupported("pagemap shows no PFNs (needs CAP_SYS_ADMIN)");
    uint64_t addr = start + i * kPage;
    if (runs.empty() || runs.back().addr + runs.back().npages * kPage != addr) {
      runs.push_back({addr, 0, nullptr, nullptr, {}, {}});
    }
    ++runs.back().npages;
    runs.back().pfn.push_back(pfn);
    ++total;
  }
  // Over the budget or out of memory: no copy; it is read while frozen.
  if (total == 0 || total * kPage > *budget) return Ok();
  std::shared_ptr<uint8_t[]> buffer(new (std::nothrow) uint8_t[total * kPage]);
  if (buffer == nullptr) return Ok();
  *budget -= total * kPage;
  std::vector<Piece> pieces;
  uint64_t off = 0;
  for (PageCopy& c : runs) {
    c.data = buffer.get() + off;
    c.buffer = buffer;
    c.good.assign(c.npages, true);
    pieces.push_back({c.addr, c.npages, buffer.get() + off});
    off += c.npages * kPage;
  }
  if (!ReadTaskPages(p.pid, p.pagemap.get(), p.mem.get(), pieces).ok()) return Ok();
  for (PageCopy& c : runs) p.copies.push_back(std::move(c));
  return Ok();
}

Result<std::unique_ptr<Precopy::Process>> StartProcess(pid_t pid, uint64_t* budget) {
  auto p = std::make_unique<Precopy::Process>();
  p->pid = pid;
  p->pagemap = STASIS_TRY(sys::pagemap::OpenPagemap(pid));
  p->mem = STASIS_TRY(sys::pagemap::OpenMem(pid));
  p->uffd = STASIS_TRY(StealUserfaultfd(pid));
  STASIS_TRY(sys::uffd::EnableWpAsync(p->uffd.get()));
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/maps", pid)));
  for (const sys::proc::MapsEntry& m : STASIS_TRY(sys::proc::ParseMaps(text))) {
    if (!Trackable(m)) continue;
    if (!STASIS_TRY(sys::uffd::RegisterWp(p->uffd.get(), m.start, m.end))) continue;
    p->vmas.push_back({m.start, m.end, m.pgoff});
  }
  // Only what is present is protected: the kernel turns WP_UNPOPULATED on
  // with WP_ASYNC, and protecting never-touched memory would allocate page
  // tables for all of it (terabytes for a sanitizer's shadow), charged to
  // the task. Protected first, copied after: a write in between shows as
  // written; a page that appears in between is not copied.
  for (const Precopy::Process::Vma& v : p->vmas) {
    std::vector<sys::uffd::Range> present =
        STASIS_TRY(sys::uffd::PresentRanges(p->pagemap.get(), v.start, v.end));
    for (sys::uffd::Range r : present) {
      STASIS_TRY(sys::uffd::WriteProtect(p->uffd.get(), r.start, r.end));
    }
    for (sys::uffd::Range r : present) {
      for (uint64_t a = r.start; a < r.end; a += kPagemapBatch * kPage) {
        STASIS_TRY(CopyBatch(*p, a, std::min(r.end, a + kPagemapBatch * kPage), budget));
      }
    }
  }
  return p;
}

// Marks the copied pages in [start, end) as not usable.
void MarkBad(std::vector<PageCopy>& copies, uint64_t start, uint64_t end) {
  auto it = std::upper_bound(copies.begin(), copies.end(), start,
                             [](uint64_t a, const PageCopy& c) { return a < c.addr; });
  if (it != copies.begin()) --it;
  for (; it != copies.end() && it->addr < end; ++it) {
    uint64_t cend = it->addr + it->npages * kPage;
    uint64_t from = std::max(start, it->addr), to = std::min(end, cend);
    for (uint64_t a = from; a < to; a += kPage) it->good[(a - it->addr) / kPage] = false;
  }
}

// smaps would show the registration (VmFlags uw) but costs a page-table
// walk; PAGEMAP_SCAN checks it instead (EPERM unless all registered).
Status SettleProcess(Precopy::Process& p) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/maps", p.pid)));
  std::vector<sys::proc::MapsEntry> maps = STASIS_TRY(sys::proc::ParseMaps(text));
  for (const Precopy::Process::Vma& v : p.vmas) {
    auto same = [&v](const sys::proc::MapsEntry& m) {
      return m.start == v.start && m.end == v.end && m.pgoff == v.pgoff && Trackable(m);
    };
    Result<std::vector<sys::uffd::Range>> written =
        std::find_if(maps.begin(), maps.end(), same) == maps.end()
            ? Result<std::vector<sys::uffd::Range>>(Error::FromErrno("VMA changed", EPERM))
            : sys::uffd::WrittenRanges(p.pagemap.get(), v.start, v.end);
    if (!written.ok() && written.error().errnum() != EPERM) return std::move(written).error();
    if (!written.ok()) {
      MarkBad(p.copies, v.start, v.end);
      continue;
    }
    for (const sys::uffd::Range& r : written.value()) MarkBad(p.copies, r.start, r.end);
  }
  std::vector<uint64_t> entries;
  for (PageCopy& c : p.copies) {
    entries.resize(c.npages);
    STASIS_TRY(ReadPagemap(p.pagemap.get(), c.addr, c.npages, entries.data()));
    for (uint64_t i = 0; i < c.npages; ++i) {
      if (!(entries[i] & kPmPresent) || (entries[i] & kPmPfnMask) != c.pfn[i]) c.good[i] = false;
    }
  }
  return Ok();
}

// The copy holding a good page at addr, or nullptr.
const PageCopy* GoodCopy(const std::vector<PageCopy>& copies, uint64_t addr) {
  auto it = std::upper_bound(copies.begin(), copies.end(), addr,
                             [](uint64_t a, const PageCopy& c) { return a < c.addr; });
  if (it == copies.begin()) return nullptr;
  --it;
  if (addr >= it->addr + it->npages * kPage || !it->good[(addr - it->addr) / kPage]) return nullptr;
  return &*it;
}

struct Missing {
  uint64_t addr;
  uint64_t npages;
  bool readable;
};

// Reads what the copies do not have from the (frozen) task into one buffer.
Status ReadMissing(pid_t pid, const std::vector<Missing>& missing, PageCopies* store) {
  uint64_t total = 0;
  for (const Missing& m : missing) total += m.npages;
  if (total == 0) return Ok();
  std::shared_ptr<uint8_t[]> buffer(new (std::nothrow) uint8_t[total * kPage]);
  if (buffer == nullptr) {
    return Error(ErrorCode::kFailed,
                 fmt::format("pid {}: no memory to hold {} pages of its image", pid, total));
  }
  sys::UniqueFd mem = STASIS_TRY(sys::pagemap::OpenMem(pid));
  sys::UniqueFd pagemap = STASIS_TRY(sys::pagemap::OpenPagemap(pid));
  std::vector<Piece> pieces;
  uint64_t off = 0;
  for (const Missing& m : missing) {
    uint8_t* dst = buffer.get() + off;
    uint64_t len = m.npages * kPage;
    off += len;
    store->Add(m.addr, m.npages, dst, buffer);
    if (m.readable) {
      pieces.push_back({m.addr, m.npages, dst});
      continue;
    }
    // Pages the task may not read: /proc/PID/mem reads them (FOLL_FORCE).
    if (pread(mem.get(), dst, len, static_cast<off_t>(m.addr)) != static_cast<ssize_t>(len)) {
      return Error::Errno(fmt::format("pid {}: read /proc/PID/mem at {:#x}", pid, m.addr));
    }
  }
  return ReadTaskPages(pid, pagemap.get(), mem.get(), pieces);
}

}  // namespace

void PageCopies::Add(uint64_t addr, uint64_t npages, const uint8_t* data,
                     std::shared_ptr<const uint8_t[]> buffer) {
  runs_[addr] = {addr, npages, data};
  pages_ += npages;
  if (buffers_.empty() || buffers_.back() != buffer) buffers_.push_back(std::move(buffer));
}

Status PageCopies::Read(uint64_t addr, uint64_t npages, uint8_t* out) const {
  uint64_t end = addr + npages * kPage;
  while (addr < end) {
    auto it = runs_.upper_bound(addr);
    if (it == runs_.begin()) break;
    const Run& r = (--it)->second;
    uint64_t rend = r.addr + r.npages * kPage;
    if (addr >= rend) break;
    uint64_t len = std::min(end, rend) - addr;
    memcpy(out, r.data + (addr - r.addr), len);
    out += len;
    addr += len;
  }
  if (addr < end) {
    return Error(ErrorCode::kFailed, fmt::format("page {:#x} missing from the copy", addr));
  }
  return Ok();
}

namespace {

// The copies live in this process's memory until the image is written:
// they may take half of what the system has available, no more.
uint64_t CopyBudget() {
  Result<std::string> text = sys::proc::ReadFile("/proc/meminfo");
  if (!text.ok()) return 0;
  size_t at = text.value().find("MemAvailable:");
  if (at == std::string::npos) return 0;
  return std::strtoull(text.value().c_str() + at + 13, nullptr, 10) * 1024 / 2;
}

}  // namespace

Precopy Precopy::Start(pid_t root) {
  Precopy pc;
  uint64_t budget = CopyBudget();
  for (pid_t pid : TreePids(root)) {
    Result<std::unique_ptr<Process>> p = StartProcess(pid, &budget);
    if (!p.ok()) continue;  // read in full while frozen
    for (const PageCopy& c : p.value()->copies) pc.stats_.pages_copied += c.npages;
    ++pc.stats_.processes_tracked;
    pc.procs_[pid] = std::move(p).value();
  }
  return pc;
}

Precopy::Precopy() = default;
Precopy::Precopy(Precopy&&) noexcept = default;
Precopy& Precopy::operator=(Precopy&&) noexcept = default;
Precopy::~Precopy() = default;

void Precopy::Settle() {
  if (tracker_) {
    precopy_internal::SettleTracker(*tracker_);
    return;
  }
  for (auto it = procs_.begin(); it != procs_.end();) {
    Process& p = *it->second;
    p.settled = SettleProcess(p).ok();
    p.uffd.reset();
    p.pagemap.reset();
    it = p.settled ? std::next(it) : procs_.erase(it);
  }
}

Result<std::unique_ptr<PageCopies>> Precopy::Take(pid_t host_pid, const PagePlan& plan) {
  auto store = std::make_unique<PageCopies>();
  auto found = procs_.find(host_pid);
  const std::vector<PageCopy>* copies = found != procs_.end() ? &found->second->copies : nullptr;
  std::vector<Missing> missing;
  for (const PagePlan::Run& run : plan.runs) {
    uint64_t end = run.addr + run.npages * kPage;
    for (uint64_t addr = run.addr; addr < end;) {
      const PageCopy* c = copies ? GoodCopy(*copies, addr) : nullptr;
      uint64_t from = addr;
      if (c != nullptr) {
        uint64_t cend = std::min(end, c->addr + c->npages * kPage);
        while (addr < cend && c->good[(addr - c->addr) / kPage]) addr += kPage;
        store->Add(from, (addr - from) / kPage, c->data + (from - c->addr), c->buffer);
        stats_.pages_kept += (addr - from) / kPage;
        continue;
      }
      while (addr < end && (copies == nullptr || GoodCopy(*copies, addr) == nullptr)) {
        addr += kPage;
      }
      missing.push_back({from, (addr - from) / kPage, run.readable});
      stats_.pages_read += (addr - from) / kPage;
    }
  }
  STASIS_TRY(ReadMissing(host_pid, missing, store.get()));
  return store;
}

}  // namespace stasis::mem
