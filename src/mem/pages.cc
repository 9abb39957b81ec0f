#include "mem/pages.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "sys/pagemap.h"
#include "sys/tracee.h"

namespace stasis::mem {
namespace {

using image::Vma;

constexpr uint64_t kPage = image::kPageSize;
constexpr uint64_t kPmPresent = sys::pagemap::kPresent;
constexpr uint64_t kPmSwapped = sys::pagemap::kSwapped;
constexpr uint64_t kPmFile = sys::pagemap::kFile;
constexpr uint64_t kPmPfnMask = sys::pagemap::kPfnMask;
constexpr uint64_t kPagemapBatch = 65536;  // entries per pread: 256 MiB of address space
constexpr uint64_t kChunkPages = 1024;     // 4 MiB per read and per page record

bool CarriesPages(const Vma& vma) {
  return !vma.shared() && (vma.kind() == Vma::ANON || vma.kind() == Vma::FILE);
}

bool Wanted(const Vma& vma, uint64_t entry) {
  if (entry & kPmSwapped) return true;
  if (!(entry & kPmPresent)) return false;
  // A private file page is the file's own until the task writes it.
  return vma.kind() == Vma::ANON || !(entry & kPmFile);
}

bool IsZeroPage(const uint8_t* page) {
  const uint64_t* words = reinterpret_cast<const uint64_t*>(page);
  uint64_t acc = 0;
  for (size_t i = 0; i < kPage / sizeof(uint64_t); ++i) acc |= words[i];
  return acc == 0;
}

// Extends the last run, or starts a new one at a VMA's first page or a gap.
void AddPage(PagePlan* plan, const Vma& vma, uint64_t addr, bool first_of_vma) {
  PagePlan::Run* last = plan->runs.empty() ? nullptr : &plan->runs.back();
  if (last && !first_of_vma && last->addr + last->npages * kPage == addr) {
    ++last->npages;
  } else {
    plan->runs.push_back({addr, 1, vma.kind() == Vma::ANON, (vma.prot() & PROT_READ) != 0});
  }
}

// Appends the wanted pages of one VMA to the plan; returns how many.
Result<uint64_t> PlanVma(int pagemap, Vma* vma, PagePlan* plan) {
  uint64_t npages = (vma->end() - vma->start()) / kPage;
  std::vector<uint64_t> entries(std::min(npages, kPagemapBatch));
  uint64_t wanted = 0;
  for (uint64_t first = 0; first < npages; first += entries.size()) {
    uint64_t count = std::min<uint64_t>(entries.size(), npages - first);
    STASIS_TRY_CTX(sys::pagemap::Read(pagemap, vma->start() / kPage + first, count, entries.data()),
                   fmt::format("pagemap of {:#x}-{:#x}", vma->start(), vma->end()));
    for (uint64_t i = 0; i < count; ++i) {
      if (!Wanted(*vma, entries[i])) continue;
      AddPage(plan, *vma, vma->start() + (first + i) * kPage, wanted++ == 0);
    }
  }
  return wanted;
}

bool ForkCopies(const Vma& vma) {
  auto has = [&vma](const char* f) {
    return std::find(vma.vm_flags().begin(), vma.vm_flags().end(), f) != vma.vm_flags().end();
  };
  return vma.kind() == Vma::ANON && !vma.shared() && !has("dc") && !has("wf");
}

// The parent's VMA a child's VMA may have been copied from at fork.
const Vma* SharableParentVma(const image::Process& parent, const Vma& mine) {
  if (!ForkCopies(mine)) return nullptr;
  for (const Vma& v : parent.vmas()) {
    if (v.start() == mine.start() && v.end() == mine.end() && ForkCopies(v)) return &v;
  }
  return nullptr;
}

// Like PlanVma, for a VMA the child shares with its parent: only pages that
// differ from the parent's are carried; pages the child no longer has while
// the parent does are recorded to zap after the restored fork.
Result<uint64_t> PlanInheritedVma(int mine, int parents, Vma* vma, PagePlan* plan) {
  uint64_t npages = (vma->end() - vma->start()) / kPage;
  std::vector<uint64_t> c(std::min(npages, kPagemapBatch)), p(c.size());
  uint64_t wanted = 0;
  uint64_t zap_start = 0;
  bool zapping = false;
  for (uint64_t first = 0; first < npages; first += c.size()) {
    uint64_t count = std::min<uint64_t>(c.size(), npages - first);
    STASIS_TRY(sys::pagemap::Read(mine, vma->start() / kPage + first, count, c.data()));
    STASIS_TRY(sys::pagemap::Read(parents, vma->start() / kPage + first, count, p.data()));
    for (uint64_t i = 0; i < count; ++i) {
      uint64_t addr = vma->start() + (first + i) * kPage;
      bool c_has = c[i] & (kPmPresent | kPmSwapped), p_has = p[i] & (kPmPresent | kPmSwapped);
      bool shared =
          (c[i] & kPmPresent) && (p[i] & kPmPresent) && (c[i] & kPmPfnMask) == (p[i] & kPmPfnMask);
      bool zap = !c_has && p_has;
      if (zap && !zapping) zap_start = addr;
      if (!zap && zapping) {
        vma->add_zap(zap_start);
        vma->add_zap(addr);
      }
      zapping = zap;
      if (c_has && !shared) AddPage(plan, *vma, addr, wanted++ == 0);
    }
  }
  if (zapping) {
    vma->add_zap(zap_start);
    vma->add_zap(vma->end());
  }
  vma->set_inherited(true);
  return wanted;
}

// process_vm_readv cannot read pages the task may not read; /proc/PID/mem
// can (FOLL_FORCE), at about half the speed.
Status ReadRange(pid_t pid, int mem_fd, bool readable, uint64_t addr, uint8_t* buf, size_t len) {
  if (readable) return sys::ReadMemory(pid, addr, buf, len);
  ssize_t n = pread(mem_fd, buf, len, static_cast<off_t>(addr));
  if (n != static_cast<ssize_t>(len)) {
    return Error::Errno(fmt::format("pid {}: read /proc/PID/mem at {:#x}", pid, addr));
  }
  return Ok();
}

// Part of a run, read into a chunk at page index `first`.
struct Segment {
  const PagePlan::Run* run;
  uint64_t addr;
  uint64_t npages;
  uint64_t first;
};

// Pages read out of the task in one go: up to kChunkPages pages from up to
// kChunkSegments pieces of runs (a Python process has about a thousand
// runs, most of one or two pages; one read and one hand-over per run would
// cost more than the copying), with its all-zero pages marked.
struct Chunk {
  const std::vector<Segment>* segments = nullptr;  // the reader's plan
  uint64_t npages = 0;
  uint8_t* data = nullptr;  // kChunkPages pages
  std::vector<bool> zero;
};

constexpr size_t kChunkSegments = 256;  // well under IOV_MAX
constexpr size_t kDepth = PageWriter::kDepth;

// Splits the plan into chunks' worth of segments.
std::vector<std::vector<Segment>> ChunkPlan(const PagePlan& plan) {
  std::vector<std::vector<Segment>> chunks(1);
  uint64_t used = 0;
  for (const PagePlan::Run& run : plan.runs) {
    for (uint64_t done = 0; done < run.npages;) {
      if (used == kChunkPages || chunks.back().size() == kChunkSegments) {
        chunks.emplace_back();
        used = 0;
      }
      uint64_t n = std::min(kChunkPages - used, run.npages - done);
      chunks.back().push_back({&run, run.addr + done * kPage, n, used});
      used += n;
      done += n;
    }
  }
  if (chunks.back().empty()) chunks.pop_back();
  return chunks;
}

// Writes the non-zero pages of a chunk (all of them, for file-backed runs)
// as page records of consecutive pages.
Status EmitChunk(uint32_t image_pid, const Chunk& c, image::Writer& writer, PageStats* stats) {
  for (const Segment& seg : *c.segments) {
    uint64_t i = 0;
    while (i < seg.npages) {
      if (c.zero[seg.first + i]) {
        ++stats->zero_pages;
        ++i;
        continue;
      }
      uint64_t j = i + 1;
      while (j < seg.npages && !c.zero[seg.first + j]) ++j;
      STASIS_TRY(writer.WritePages(image_pid, seg.addr + i * kPage,
                                   c.data + (seg.first + i) * kPage, static_cast<uint32_t>(j - i)));
      stats->pages_written += j - i;
      i = j;
    }
  }
  return Ok();
}

// One process_vm_readv for all the readable segments of a chunk.
Status ReadSegments(pid_t pid, int mem_fd, const std::vector<Segment>& segments, uint8_t* data,
                    const PageSource* source) {
  if (source != nullptr) {
    for (const Segment& seg : segments) {
      STASIS_TRY(source->Read(seg.addr, seg.npages, data + seg.first * kPage));
    }
    return Ok();
  }
  std::vector<struct iovec> local, remote;
  uint64_t bytes = 0;
  for (const Segment& seg : segments) {
    uint8_t* dst = data + seg.first * kPage;
    if (!seg.run->readable) {
      STASIS_TRY(ReadRange(pid, mem_fd, false, seg.addr, dst, seg.npages * kPage));
      continue;
    }
    local.push_back({dst, seg.npages * kPage});
    remote.push_back({reinterpret_cast<void*>(seg.addr), seg.npages * kPage});
    bytes += seg.npages * kPage;
  }
  if (local.empty()) return Ok();
  ssize_t n = process_vm_readv(pid, local.data(), local.size(), remote.data(), remote.size(), 0);
  if (n == static_cast<ssize_t>(bytes)) return Ok();
  // Name the segment that failed: read them one by one.
  for (const Segment& seg : segments) {
    if (seg.run->readable) {
      STASIS_TRY(
          ReadRange(pid, mem_fd, true, seg.addr, data + seg.first * kPage, seg.npages * kPage));
    }
  }
  return Error(ErrorCode::kFailed,
               fmt::format("pid {}: process_vm_readv of {} segments read {} of {} bytes", pid,
                           local.size(), n, bytes));
}

// Reads chunks on a thread of its own while the caller checksums and writes
// the previous ones: copying out of the task and writing the image each run
// at about the same speed, so overlapping them nearly doubles throughput.
class ChunkReader {
 public:
  ChunkReader(pid_t pid, int mem_fd, const PagePlan& plan, const PageSource* source,
              const std::array<std::unique_ptr<uint8_t[]>, kDepth>& buffers)
      : pid_(pid), mem_fd_(mem_fd), source_(source), todo_(ChunkPlan(plan)) {
    for (size_t i = 0; i < kDepth; ++i) pool_[i].data = buffers[i].get();
    thread_ = std::thread([this] { Run(); });
  }
  ~ChunkReader() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  // The next chunk, in plan order; nullptr after the last one.
  Result<Chunk*> Next() {
    std::unique_lock<std::mutex> lock(mu_);
    if (consumed_ > 0) {
      ++freed_;  // the caller is done with the previous chunk
      cv_.notify_all();
    }
    if (consumed_ == todo_.size()) return nullptr;
    cv_.wait(lock, [this] { return filled_ > consumed_ || !status_.ok(); });
    if (!status_.ok()) return status_.error();
    return &pool_[consumed_++ % kDepth];
  }

 private:
  void Run() {
    for (size_t i = 0; i < todo_.size(); ++i) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || i < freed_ + kDepth; });
        if (stop_) return;
      }
      Chunk& c = pool_[i % kDepth];
      Status st = Fill(todo_[i], &c);
      std::lock_guard<std::mutex> lock(mu_);
      if (!st.ok()) {
        status_ = std::move(st);
        cv_.notify_all();
        return;
      }
      ++filled_;
      cv_.notify_all();
    }
  }

  Status Fill(const std::vector<Segment>& segments, Chunk* c) {
    c->segments = &segments;
    const Segment& last = segments.back();
    c->npages = last.first + last.npages;
    STASIS_TRY(ReadSegments(pid_, mem_fd_, segments, c->data, source_));
    c->zero.assign(c->npages, false);
    for (const Segment& seg : segments) {
      if (!seg.run->anon) continue;
      for (uint64_t i = seg.first; i < seg.first + seg.npages; ++i) {
        c->zero[i] = IsZeroPage(c->data + i * kPage);
      }
    }
    return Ok();
  }

  pid_t pid_;
  int mem_fd_;
  const PageSource* source_;
  std::vector<std::vector<Segment>> todo_;
  Chunk pool_[kDepth];
  std::mutex mu_;
  std::condition_variable cv_;
  size_t filled_ = 0, consumed_ = 0, freed_ = 0;
  bool stop_ = false;
  Status status_;
  std::thread thread_;
};

}  // namespace

Result<PagePlan> PlanPages(pid_t pid, image::Process* proc, const ParentView* parent) {
  sys::UniqueFd pagemap = STASIS_TRY(sys::pagemap::OpenPagemap(pid));
  sys::UniqueFd parent_pagemap;
  if (parent != nullptr) parent_pagemap = STASIS_TRY(sys::pagemap::OpenPagemap(parent->host_pid));
  PagePlan plan;
  for (Vma& vma : *proc->mutable_vmas()) {
    if (!CarriesPages(vma)) continue;
    const Vma* theirs = parent ? SharableParentVma(*parent->proc, vma) : nullptr;
    uint64_t wanted =
        theirs ? STASIS_TRY(PlanInheritedVma(pagemap.get(), parent_pagemap.get(), &vma, &plan))
               : STASIS_TRY(PlanVma(pagemap.get(), &vma, &plan));
    vma.set_has_pages(wanted > 0);
  }
  return plan;
}

PageWriter::PageWriter() {
  for (auto& buf : buffers_) buf = std::make_unique_for_overwrite<uint8_t[]>(kChunkPages * kPage);
}

Status PageWriter::Write(pid_t host_pid, uint32_t image_pid, const PagePlan& plan,
                         image::Writer& writer, PageStats* stats, const PageSource* source) {
  sys::UniqueFd mem;
  if (source == nullptr) {
    mem = STASIS_TRY(sys::pagemap::OpenMem(host_pid));
  }
  for (const PagePlan::Run& run : plan.runs) stats->pages_present += run.npages;
  ChunkReader reader(host_pid, mem.get(), plan, source, buffers_);
  while (Chunk* chunk = STASIS_TRY(reader.Next())) {
    STASIS_TRY(EmitChunk(image_pid, *chunk, writer, stats));
  }
  return Ok();
}

}  // namespace stasis::mem
