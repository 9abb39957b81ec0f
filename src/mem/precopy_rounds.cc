// The pre-copy of a migration (precopy.h): rounds that send pages while
// the tree runs, and at the freeze the judgement of which sent copies are
// still good. Nothing of a page's contents stays here after its round: a
// sent page is remembered by the physical page it was (pagemap's PFN), and
// the tracking (userfaultfd write-protect, PAGEMAP_SCAN) says whether it
// was written since. A sent page is kept at the freeze only if its VMA is
// the one registered, it was not written since it was last sent, and
// pagemap still shows the same physical page (MADV_DONTNEED and refaulting,
// swapping, KSM or migration all count as changed).
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <optional>
#include <set>

#include "image/stream.h"
#include "mem/precopy.h"
#include "mem/precopy_internal.h"
#include "sys/pagemap.h"
#include "sys/proc.h"
#include "sys/uffd.h"

namespace stasis::mem {
namespace {

using precopy_internal::Piece;
using precopy_internal::ReadPagemap;
using precopy_internal::ReadTaskPages;
using precopy_internal::Trackable;

constexpr uint64_t kPage = image::kPageSize;
constexpr uint64_t kPmPresent = sys::pagemap::kPresent;
constexpr uint64_t kPmPfnMask = sys::pagemap::kPfnMask;
constexpr uint64_t kChunkPages = 512;  // sent PFNs are kept per 2 MiB of address space
constexpr uint64_t kChunkBytes = kChunkPages * kPage;
constexpr uint64_t kReadPages = 1024;  // read and sent 4 MiB at a time

// The PFN of every sent page whose copy may still be good (0: none), in
// chunks allocated only where pages were sent: 8 bytes a sent page, and
// nothing for the address space a sparse VMA leaves empty.
class SentPages {
 public:
  void Set(uint64_t addr, uint64_t pfn) {
    std::unique_ptr<Chunk>& c = chunks_[addr / kChunkBytes];
    if (c == nullptr) c = std::make_unique<Chunk>(Chunk{});
    (*c)[(addr % kChunkBytes) / kPage] = pfn;
  }
  uint64_t Get(uint64_t addr) const {
    auto it = chunks_.find(addr / kChunkBytes);
    return it == chunks_.end() ? 0 : (*it->second)[(addr % kChunkBytes) / kPage];
  }
  void Forget(uint64_t start, uint64_t end) {
    auto it = chunks_.lower_bound(start / kChunkBytes);
    while (it != chunks_.end() && it->first * kChunkBytes < end) {
      uint64_t base = it->first * kChunkBytes;
      if (start <= base && end >= base + kChunkBytes) {
        it = chunks_.erase(it);
        continue;
      }
      for (uint64_t a = std::max(start, base); a < std::min(end, base + kChunkBytes); a += kPage) {
        (*it->second)[(a - base) / kPage] = 0;
      }
      ++it;
    }
  }
  // Drops every page whose pagemap entry no longer shows its PFN.
  Status Check(int pagemap) {
    std::array<uint64_t, kChunkPages> entries;
    for (auto& [index, chunk] : chunks_) {
      STASIS_TRY(ReadPagemap(pagemap, index * kChunkBytes, kChunkPages, entries.data()));
      for (uint64_t i = 0; i < kChunkPages; ++i) {
        uint64_t e = entries[i];
        if (!(e & kPmPresent) || (e & kPmPfnMask) != (*chunk)[i]) (*chunk)[i] = 0;
      }
    }
    return Ok();
  }

 private:
  using Chunk = std::array<uint64_t, kChunkPages>;
  std::map<uint64_t, std::unique_ptr<Chunk>> chunks_;  // by address / kChunkBytes
};

struct TrackedProcess {
  pid_t pid;
  uint32_t ns_pid;  // as the tree sees it
  sys::UniqueFd uffd;
  sys::UniqueFd pagemap;  // of the mm the uffd tracks (opened before any exec)
  sys::UniqueFd mem;
  SentPages sent;
};

double MsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

Result<std::unique_ptr<TrackedProcess>> TrackProcess(pid_t pid) {
  auto p = std::make_unique<TrackedProcess>();
  p->pid = pid;
  std::string status = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/status", pid)));
  sys::proc::ProcStatus st = STASIS_TRY(sys::proc::ParseStatus(status));
  p->ns_pid = static_cast<uint32_t>(st.ns_pid.empty() ? pid : st.ns_pid.back());
  p->pagemap = STASIS_TRY(sys::pagemap::OpenPagemap(pid));
  p->mem = STASIS_TRY(sys::pagemap::OpenMem(pid));
  p->uffd = STASIS_TRY(precopy_internal::StealUserfaultfd(pid));
  STASIS_TRY(sys::uffd::EnableWpAsync(p->uffd.get()));
  return p;
}

// One round's sending: the send function's failure ends the round (the
// destination is gone), a process's own failure only its tracking.
struct RoundSender {
  const SendRun& send;
  std::vector<uint8_t>& buffer;  // kReadPages pages
  RoundStats& stats;
  std::optional<Error> send_error;

  // Reads the present pages of [start, end) (at most kReadPages) and sends
  // them; remembers their PFNs as read before the contents, so that a page
  // replaced in between is never taken for the one sent.
  Status Batch(TrackedProcess& p, uint64_t start, uint64_t end) {
    uint64_t n = (end - start) / kPage;
    std::array<uint64_t, kReadPages> entries;
    STASIS_TRY(ReadPagemap(p.pagemap.get(), start, n, entries.data()));
    std::vector<Piece> pieces;
    uint64_t used = 0;
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t addr = start + i * kPage;
      if (!(entries[i] & kPmPresent)) continue;
      if (!pieces.empty() && pieces.back().addr + pieces.back().npages * kPage == addr) {
        ++pieces.back().npages;
      } else {
        pieces.push_back({addr, 1, buffer.data() + used * kPage});
      }
      ++used;
    }
    p.sent.Forget(start, end);
    // Pages the task unmaps meanwhile make the read short: nothing of the
    // batch is sent; the VMA's change shows in the next round.
    if (pieces.empty() || !ReadTaskPages(p.pid, p.pagemap.get(), p.mem.get(), pieces).ok()) {
      return Ok();
    }
    for (const Piece& piece : pieces) {
      Status sent = send(p.ns_pid, piece.addr, piece.npages, piece.dst);
      if (!sent.ok()) {
        send_error = sent.error();
        return std::move(sent).error();
      }
      for (uint64_t i = 0; i < piece.npages; ++i) {
        uint64_t addr = piece.addr + i * kPage;
        p.sent.Set(addr, entries[(addr - start) / kPage] & kPmPfnMask);
      }
      stats.pages_sent += piece.npages;
      stats.bytes += piece.npages * kPage;
    }
    return Ok();
  }

  // Protected first, read after: a write in between shows in the next
  // round; a page that appears in between is not read now.
  Status Ranges(TrackedProcess& p, const std::vector<sys::uffd::Range>& ranges) {
    for (const sys::uffd::Range& r : ranges) {
      STASIS_TRY(sys::uffd::WriteProtect(p.uffd.get(), r.start, r.end));
    }
    for (const sys::uffd::Range& r : ranges) {
      for (uint64_t a = r.start; a < r.end; a += kReadPages * kPage) {
        STASIS_TRY(Batch(p, a, std::min(r.end, a + kReadPages * kPage)));
      }
    }
    return Ok();
  }
};

Result<std::vector<sys::proc::MapsEntry>> TrackableMaps(pid_t pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/maps", pid)));
  std::vector<sys::proc::MapsEntry> maps = STASIS_TRY(sys::proc::ParseMaps(text));
  std::erase_if(maps, [](const sys::proc::MapsEntry& m) { return !Trackable(m); });
  return maps;
}

// The pages of VMA m written since the last round, if m is registered
// (with our uffd: a range registered with one cannot be with another);
// nullopt if it is not: a VMA that took another's place (PAGEMAP_SCAN
// refuses with EPERM a range not wholly registered in WP_ASYNC mode). A
// registered VMA split or shrunk since stays registered: its pages too.
Result<std::optional<std::vector<sys::uffd::Range>>> Written(const TrackedProcess& p,
                                                             const sys::proc::MapsEntry& m) {
  Result<std::vector<sys::uffd::Range>> written =
      sys::uffd::WrittenRanges(p.pagemap.get(), m.start, m.end);
  if (written.ok()) return std::optional(std::move(written).value());
  if (written.error().errnum() == EPERM) return std::optional<std::vector<sys::uffd::Range>>();
  return std::move(written).error();
}

// The parts of a (sorted, disjoint) that are also in b.
std::vector<sys::uffd::Range> Intersect(const std::vector<sys::uffd::Range>& a,
                                        const std::vector<sys::uffd::Range>& b) {
  std::vector<sys::uffd::Range> out;
  for (size_t i = 0, j = 0; i < a.size() && j < b.size();) {
    uint64_t start = std::max(a[i].start, b[j].start), end = std::min(a[i].end, b[j].end);
    if (start < end) out.push_back({start, end});
    if (a[i].end < b[j].end) {
      ++i;
    } else {
      ++j;
    }
  }
  return out;
}

// The written pages of m that are present: PAGEMAP_SCAN counts the never
// populated parts of a VMA registered with WP_UNPOPULATED as written too,
// and protecting those would allocate page tables for all of them.
Result<std::optional<std::vector<sys::uffd::Range>>> WrittenPresent(const TrackedProcess& p,
                                                                    const sys::proc::MapsEntry& m) {
  std::optional<std::vector<sys::uffd::Range>> written = STASIS_TRY(Written(p, m));
  if (!written || written->empty()) return written;
  return std::optional(
      Intersect(*written, STASIS_TRY(sys::uffd::PresentRanges(p.pagemap.get(), m.start, m.end))));
}

uint64_t PagesIn(const std::vector<sys::uffd::Range>& ranges) {
  uint64_t n = 0;
  for (const sys::uffd::Range& r : ranges) n += (r.end - r.start) / kPage;
  return n;
}

// Forgets the sent pages outside the VMAs (in address order) that are
// tracked now: unmapped, or no longer private writable memory.
void ForgetOutside(SentPages& sent, const std::vector<sys::proc::MapsEntry>& tracked) {
  uint64_t from = 0;
  for (const sys::proc::MapsEntry& m : tracked) {
    if (m.start > from) sent.Forget(from, m.start);
    from = m.end;
  }
  sent.Forget(from, UINT64_MAX - kPage + 1);
}

// One process's part of a round: what its registered VMAs had written,
// then every VMA that appeared (registered and sent whole).
Status RoundProcess(TrackedProcess& p, RoundSender& sender) {
  std::vector<sys::proc::MapsEntry> maps = STASIS_TRY(TrackableMaps(p.pid));
  std::vector<sys::proc::MapsEntry> tracked;
  for (const sys::proc::MapsEntry& m : maps) {
    std::optional<std::vector<sys::uffd::Range>> written = STASIS_TRY(WrittenPresent(p, m));
    if (written) {
      sender.stats.dirty_pages += PagesIn(*written);
      STASIS_TRY(sender.Ranges(p, *written));
      tracked.push_back(m);
      continue;
    }
    p.sent.Forget(m.start, m.end);
    if (!STASIS_TRY(sys::uffd::RegisterWp(p.uffd.get(), m.start, m.end))) continue;
    tracked.push_back(m);
    // Only what is present is protected and sent: never-touched memory
    // would cost page tables (precopy.cc says more).
    STASIS_TRY(
        sender.Ranges(p, STASIS_TRY(sys::uffd::PresentRanges(p.pagemap.get(), m.start, m.end))));
  }
  ForgetOutside(p.sent, tracked);
  return Ok();
}

// The tree frozen: forgets what was written since the last round, what
// is no longer in a registered VMA, and pages whose PFN changed.
Status SettleProcess(TrackedProcess& p) {
  std::vector<sys::proc::MapsEntry> tracked;
  for (const sys::proc::MapsEntry& m : STASIS_TRY(TrackableMaps(p.pid))) {
    std::optional<std::vector<sys::uffd::Range>> written = STASIS_TRY(Written(p, m));
    if (!written) continue;
    for (const sys::uffd::Range& r : *written) p.sent.Forget(r.start, r.end);
    tracked.push_back(m);
  }
  ForgetOutside(p.sent, tracked);
  return p.sent.Check(p.pagemap.get());
}

}  // namespace

class Tracker {
 public:
  pid_t root = 0;
  std::map<pid_t, std::unique_ptr<TrackedProcess>> procs;
  std::set<pid_t> untracked;  // every page of these goes with the image
  std::vector<uint8_t> buffer = std::vector<uint8_t>(kReadPages * kPage);
  bool settled = false;

  // Processes born since the last look are tracked from now on.
  void Discover(const std::vector<pid_t>& pids) {
    for (pid_t pid : pids) {
      if (procs.count(pid) != 0 || untracked.count(pid) != 0) continue;
      Result<std::unique_ptr<TrackedProcess>> p = TrackProcess(pid);
      if (p.ok()) {
        procs[pid] = std::move(p).value();
      } else {
        untracked.insert(pid);
      }
    }
  }
};

namespace precopy_internal {

void SettleTracker(Tracker& t) {
  for (auto it = t.procs.begin(); it != t.procs.end();) {
    TrackedProcess& p = *it->second;
    bool ok = SettleProcess(p).ok();
    // Closing the uffd unregisters the VMAs: the dump sees them as they were.
    p.uffd.reset();
    p.pagemap.reset();
    p.mem.reset();
    it = ok ? std::next(it) : t.procs.erase(it);
  }
  t.settled = true;
}

}  // namespace precopy_internal

void TrackerDeleter::operator()(Tracker* t) const { delete t; }

Precopy Precopy::StartTracking(pid_t root) {
  Precopy pc;
  pc.tracker_.reset(new Tracker());
  pc.tracker_->root = root;
  pc.tracker_->Discover(precopy_internal::TreePids(root));
  pc.stats_.processes_tracked = pc.tracker_->procs.size();
  return pc;
}

Result<RoundStats> Precopy::SendRound(const SendRun& send) {
  if (!tracker_ || tracker_->settled) {
    return Error::Invalid("pre-copy round without tracking, or after the freeze");
  }
  auto start = std::chrono::steady_clock::now();
  Tracker& t = *tracker_;
  RoundStats stats;
  std::vector<pid_t> pids = precopy_internal::TreePids(t.root);
  t.Discover(pids);
  RoundSender sender{send, t.buffer, stats, std::nullopt};
  for (auto it = t.procs.begin(); it != t.procs.end();) {
    bool alive = std::find(pids.begin(), pids.end(), it->first) != pids.end();
    Status done = alive ? RoundProcess(*it->second, sender) : Status(Ok());
    if (sender.send_error) return *sender.send_error;
    if (alive && done.ok()) {
      ++it;
      continue;
    }
    // Exited, or exec'd (its old mm is what the uffd tracks): whatever
    // remains of it goes with the image.
    t.untracked.insert(it->first);
    it = t.procs.erase(it);
  }
  stats_.pages_copied += stats.pages_sent;
  stats_.processes_tracked = t.procs.size();
  stats.ms = MsSince(start);
  return stats;
}

Result<uint64_t> Precopy::DirtyPages() {
  if (!tracker_ || tracker_->settled) return Error::Invalid("no pre-copy tracking to count");
  uint64_t dirty = 0;
  for (auto& [pid, p] : tracker_->procs) {
    Result<std::vector<sys::proc::MapsEntry>> maps = TrackableMaps(pid);
    if (!maps.ok()) continue;
    for (const sys::proc::MapsEntry& m : maps.value()) {
      Result<std::optional<std::vector<sys::uffd::Range>>> written = WrittenPresent(*p, m);
      // A VMA not registered yet is sent whole (what is present) in the
      // next round.
      if (!written.ok() || !written.value()) {
        Result<std::vector<sys::uffd::Range>> present =
            sys::uffd::PresentRanges(p->pagemap.get(), m.start, m.end);
        if (present.ok()) dirty += PagesIn(present.value());
      } else {
        dirty += PagesIn(*written.value());
      }
    }
  }
  return dirty;
}

PlanSplit Precopy::Split(pid_t host_pid, const PagePlan& plan) const {
  PlanSplit out;
  const TrackedProcess* p = nullptr;
  if (tracker_ && tracker_->settled) {
    auto it = tracker_->procs.find(host_pid);
    if (it != tracker_->procs.end()) p = it->second.get();
  }
  for (const PagePlan::Run& run : plan.runs) {
    // Neither merges across the plan's runs: a run starts at a VMA's first
    // page, and a restore takes a range only inside one VMA.
    bool fresh = true, fresh_kept = true;
    for (uint64_t i = 0; i < run.npages; ++i) {
      uint64_t addr = run.addr + i * kPage;
      if (p != nullptr && p->sent.Get(addr) != 0) {
        bool extend = !fresh_kept && !out.kept.empty() && out.kept.back().end == addr;
        fresh_kept = false;
        if (extend) {
          out.kept.back().end += kPage;
        } else {
          out.kept.push_back({addr, addr + kPage});
        }
        continue;
      }
      PagePlan::Run* last = out.rest.runs.empty() ? nullptr : &out.rest.runs.back();
      if (!fresh && last != nullptr && last->addr + last->npages * kPage == addr) {
        ++last->npages;
      } else {
        out.rest.runs.push_back({addr, 1, run.anon, run.readable});
      }
      fresh = false;
    }
  }
  return out;
}

}  // namespace stasis::mem
