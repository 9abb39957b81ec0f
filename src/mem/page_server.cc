#include "mem/page_server.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>

#include "image/stream.h"
#include "mem/prefetch.h"

namespace stasis::mem {
namespace {

constexpr uint64_t kPage = image::kPageSize;

}  // namespace

PageServer::PageServer(std::vector<Process> procs) : buffer_(new uint8_t[kChunkBytes]) {
  procs_.reserve(procs.size());
  for (Process& def : procs) {
    Proc p;
    std::sort(def.ranges.begin(), def.ranges.end(),
              [](const Range& a, const Range& b) { return a.start < b.start; });
    for (const Range& r : def.ranges) p.unsent.Add(r.start, r.end);
    p.def = std::move(def);
    procs_.push_back(std::move(p));
  }
}

PageServer::Proc* PageServer::Find(uint32_t pid) {
  for (Proc& p : procs_) {
    if (p.def.pid == pid) return &p;
  }
  return nullptr;
}

void PageServer::Request(uint32_t pid, uint64_t addr) {
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.requests;
  Proc* p = Find(pid);
  uint64_t page = addr & ~(kPage - 1);
  if (p == nullptr || !p->unsent.Covers(page, page + kPage)) return;
  requests_.push_back({pid, page, PrefetchWindow(page, {0, UINT64_MAX})});
}

// The oldest request's window: the unsent piece holding its page first,
// then the other pieces of the window.
std::optional<PageServer::Chunk> PageServer::NextRequested() {
  while (!requests_.empty()) {
    const Pending& r = requests_.front();
    Proc* p = Find(r.pid);
    std::vector<Range> pieces = p->unsent.Within(r.window.start, r.window.end);
    if (pieces.empty()) {
      requests_.pop_front();
      continue;
    }
    auto first = std::find_if(pieces.begin(), pieces.end(), [&r](const Range& piece) {
      return piece.start <= r.page && r.page < piece.end;
    });
    Range take = first != pieces.end() ? *first : pieces.front();
    p->unsent.Remove(take.start, take.end);
    stats_.requested_pages += (take.end - take.start) / kPage;
    return Chunk{p, take};
  }
  return std::nullopt;
}

std::optional<PageServer::Chunk> PageServer::NextInOrder() {
  for (Proc& p : procs_) {
    for (; p.next_range < p.def.ranges.size(); ++p.next_range) {
      const Range& r = p.def.ranges[p.next_range];
      std::vector<Range> pieces = p.unsent.Within(r.start, r.end);
      if (pieces.empty()) continue;
      Range take = {pieces[0].start, std::min(pieces[0].end, pieces[0].start + kChunkBytes)};
      p.unsent.Remove(take.start, take.end);
      return Chunk{&p, take};
    }
  }
  return std::nullopt;
}

// process_vm_readv cannot read pages the task may not read (PROT_NONE, or
// write-only); /proc/PID/mem can (FOLL_FORCE).
Status PageServer::Read(Proc& p, Range r, uint8_t* out) {
  pid_t pid = p.def.host_pid;
  uint64_t len = r.end - r.start;
  struct iovec local = {out, len};
  struct iovec remote = {reinterpret_cast<void*>(r.start), len};
  ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
  uint64_t done = n > 0 ? static_cast<uint64_t>(n) : 0;
  if (done == len) return Ok();
  if (n < 0 && errno != EFAULT) {
    return Error::Errno(fmt::format("pid {}: process_vm_readv({:#x}, {})", pid, r.start, len));
  }
  if (!p.mem.valid()) {
    p.mem = sys::UniqueFd(open(fmt::format("/proc/{}/mem", pid).c_str(), O_RDONLY | O_CLOEXEC));
    if (!p.mem.valid()) return Error::Errno(fmt::format("pid {}: open /proc/PID/mem", pid));
  }
  while (done < len) {
    ssize_t got = pread(p.mem.get(), out + done, len - done, static_cast<off_t>(r.start + done));
    if (got <= 0) {
      if (got < 0 && errno == EINTR) continue;
      return Error::Errno(fmt::format("pid {}: read /proc/PID/mem at {:#x}", pid, r.start + done));
    }
    done += static_cast<uint64_t>(got);
  }
  return Ok();
}

Result<bool> PageServer::SendNext(const SendRun& send) {
  std::optional<Chunk> chunk;
  {
    std::lock_guard<std::mutex> lock(mu_);
    chunk = NextRequested();
    if (!chunk) chunk = NextInOrder();
  }
  if (!chunk) return false;
  const Range& r = chunk->range;
  uint32_t pid = chunk->proc->def.pid;
  uint64_t npages = (r.end - r.start) / kPage;
  auto context = fmt::format("post-copy pages {:#x}-{:#x} of pid {}", r.start, r.end, pid);
  STASIS_TRY_CTX(Read(*chunk->proc, r, buffer_.get()), context);
  STASIS_TRY_CTX(send(pid, r.start, npages, buffer_.get()), context);
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.chunks;
  stats_.pages_sent += npages;
  return true;
}

void PageServer::Restart(uint32_t pid, std::vector<Range> still_missing) {
  std::lock_guard<std::mutex> lock(mu_);
  Proc* p = Find(pid);
  if (p == nullptr) return;
  RangeSet deferred;
  for (const Range& r : p->def.ranges) deferred.Add(r.start, r.end);
  p->unsent = RangeSet();
  for (const Range& m : still_missing) {
    for (const Range& r : deferred.Within(m.start & ~(kPage - 1), m.end)) {
      p->unsent.Add(r.start, r.end);
    }
  }
  p->next_range = 0;
  std::erase_if(requests_, [pid](const Pending& r) { return r.pid == pid; });
}

uint64_t PageServer::unsent_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t n = 0;
  for (const Proc& p : procs_) n += p.unsent.bytes();
  return n;
}

PageServerStats PageServer::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace stasis::mem
