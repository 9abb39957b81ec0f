#include "mem/page_store.h"

#include <fmt/format.h>

#include <cstring>

#include "sys/tracee.h"

namespace stasis::mem {

constexpr uint64_t kPage = image::kPageSize;

Status ProcessMemorySink::Write(uint64_t addr, const uint8_t* data, uint64_t len) {
  return sys::WriteMemory(host_pid_, addr, data, len);
}

void PageStore::Expect(const image::Process& proc) {
  std::lock_guard<std::mutex> lock(mu_);
  Process& p = procs_[proc.pid()];
  for (const image::Vma& v : proc.vmas()) {
    if (v.has_pages()) p.carrying[v.start()] = v.end();
  }
}

Result<PageStore::Process*> PageStore::Find(int pid) {
  auto it = procs_.find(pid);
  if (it == procs_.end()) {
    return Error::Corrupt(fmt::format("pages of pid {}, which the image does not hold", pid));
  }
  return &it->second;
}

Status PageStore::CheckRun(int pid, const Process& p, uint64_t addr, uint64_t end) {
  auto it = p.carrying.upper_bound(addr);
  bool inside = it != p.carrying.begin() && std::prev(it)->first <= addr &&
                std::prev(it)->second >= end && addr % kPage == 0 && end > addr;
  if (inside) return Ok();
  return Error::Corrupt(fmt::format(
      "pid {}: pages {:#x}-{:#x} are outside any VMA that carries pages", pid, addr, end));
}

Status PageStore::Declare(int pid, uint64_t start, uint64_t end) {
  std::lock_guard<std::mutex> lock(mu_);
  Process* p = STASIS_TRY(Find(pid));
  STASIS_TRY(CheckRun(pid, *p, start, end));
  p->declared.Add(start, end);
  return Ok();
}

// Drops what is held of [start, end), keeping the parts of runs around it.
void PageStore::Forget(Process& p, uint64_t start, uint64_t end) {
  auto it = p.held.upper_bound(start);
  if (it != p.held.begin() && std::prev(it)->second.end > start) --it;
  while (it != p.held.end() && it->first < end) {
    uint64_t s = it->first;
    Held h = std::move(it->second);
    it = p.held.erase(it);
    if (s < start) p.held[s] = {start, h.data, h.owner};
    if (h.end > end) {
      p.held[end] = {h.end, h.data + (end - s), h.owner};
      break;
    }
  }
}

Status PageStore::Add(const image::PageRun& run, std::shared_ptr<const void> owner) {
  uint64_t end = run.addr + uint64_t{run.npages} * kPage;
  std::unique_lock<std::mutex> lock(mu_);
  Process* p = STASIS_TRY(Find(static_cast<int>(run.pid)));
  STASIS_TRY(CheckRun(static_cast<int>(run.pid), *p, run.addr, end));
  pages_ += run.npages;
  if (p->sink != nullptr && p->delivery == Delivery::kEager) {
    STASIS_TRY(p->sink->Write(run.addr, run.data, end - run.addr));
  } else {
    const uint8_t* data = run.data;
    if (owner == nullptr) {
      // Else the bytes live only as long as the reader's current record.
      std::shared_ptr<uint8_t[]> copy(new (std::nothrow) uint8_t[end - run.addr]);
      if (copy == nullptr) {
        return Error(ErrorCode::kFailed,
                     fmt::format("pid {}: no memory to hold {} pages", run.pid, run.npages));
      }
      memcpy(copy.get(), run.data, end - run.addr);
      data = copy.get();
      owner = std::move(copy);
    }
    Forget(*p, run.addr, end);
    p->held[run.addr] = {end, data, std::move(owner)};
  }
  p->received.Add(run.addr, end);
  lock.unlock();
  Notify();
  return Ok();
}

void PageStore::Notify() {
  arrived_.notify_all();
  std::function<void()> notify;
  {
    std::lock_guard<std::mutex> lock(mu_);
    notify = on_arrival_;
  }
  if (notify) notify();
}

void PageStore::OnArrival(std::function<void()> notify) {
  std::lock_guard<std::mutex> lock(mu_);
  on_arrival_ = std::move(notify);
}

// Pieces held apart that touch in address go out in one write (one
// UFFDIO_COPY for the lazy pager: the round trip costs, not the bytes),
// gathered into one buffer when their bytes are apart (up to kGather: a
// piece held whole, as a mapped image's, is never copied).
Status PageStore::WriteHeld(Process& p, uint64_t start, uint64_t end, std::vector<Range>* written) {
  constexpr uint64_t kGather = 2 * 1024 * 1024;
  auto it = p.held.upper_bound(start);
  if (it != p.held.begin() && std::prev(it)->second.end > start) --it;
  std::vector<Range> done;
  std::vector<uint8_t> gather;
  while (it != p.held.end() && it->first < end) {
    uint64_t s = std::max(start, it->first), e = std::min(end, it->second.end);
    const uint8_t* data = it->second.data + (s - it->first);
    bool apart = false;
    auto next = std::next(it);
    for (; next != p.held.end() && next->first == e && e < end; ++next) {
      uint64_t next_end = std::min(end, next->second.end);
      bool adjacent = next->second.data == data + (e - s);
      if ((apart || !adjacent) && next_end - s > kGather) break;
      apart = apart || !adjacent;
      e = next_end;
    }
    if (apart) {
      gather.resize(e - s);
      for (auto piece = it; piece != next; ++piece) {
        uint64_t from = std::max(s, piece->first), to = std::min(e, piece->second.end);
        memcpy(gather.data() + (from - s), piece->second.data + (from - piece->first), to - from);
      }
      data = gather.data();
    }
    STASIS_TRY(p.sink->Write(s, data, e - s));
    done.push_back({s, e});
    it = next;
  }
  for (const Range& r : done) Forget(p, r.start, r.end);
  if (written != nullptr) written->insert(written->end(), done.begin(), done.end());
  return Ok();
}

Status PageStore::Attach(int pid, std::unique_ptr<PageSink> sink, Delivery delivery) {
  std::lock_guard<std::mutex> lock(mu_);
  Process* p = STASIS_TRY(Find(pid));
  p->sink = std::move(sink);
  p->delivery = delivery;
  if (delivery == Delivery::kEager) STASIS_TRY(WriteHeld(*p, 0, UINT64_MAX, nullptr));
  return Ok();
}

bool PageStore::MissingIn(const Process& p, uint64_t start, uint64_t end) const {
  for (const Range& d : p.declared.Within(start, end)) {
    if (!p.received.Covers(d.start, d.end)) return true;
  }
  return false;
}

Result<std::vector<Range>> PageStore::Fill(int pid, uint64_t start, uint64_t end, bool wait) {
  std::unique_lock<std::mutex> lock(mu_);
  Process* p = STASIS_TRY(Find(pid));
  if (p->sink == nullptr) {
    return Error(ErrorCode::kFailed, fmt::format("pid {}: pages filled before it exists", pid));
  }
  if (wait) {
    arrived_.wait(lock, [&] { return closed_.has_value() || !MissingIn(*p, start, end); });
    if (MissingIn(*p, start, end)) return NeverCame(pid, start, end);
  }
  std::vector<Range> written;
  STASIS_TRY(WriteHeld(*p, start, end, &written));
  return written;
}

Error PageStore::NeverCame(int pid, uint64_t start, uint64_t end) const {
  if (!closed_->ok()) return closed_->error();
  return Error::Corrupt(
      fmt::format("pid {}: pages {:#x}-{:#x} were announced and never came", pid, start, end));
}

Result<bool> PageStore::Arrived(int pid, uint64_t start, uint64_t end) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = procs_.find(pid);
  if (it == procs_.end() || !MissingIn(it->second, start, end)) return true;
  if (!closed_.has_value()) return false;
  return NeverCame(pid, start, end);
}

std::optional<Range> PageStore::NextHeld(int pid) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = procs_.find(pid);
  if (it == procs_.end() || it->second.held.empty()) return std::nullopt;
  const auto& [start, h] = *it->second.held.begin();
  return Range{start, h.end};
}

void PageStore::Drop(int pid) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = procs_.find(pid);
  if (it != procs_.end()) it->second.held.clear();
}

std::vector<Range> PageStore::Missing(int pid) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Range> out;
  auto it = procs_.find(pid);
  if (it == procs_.end()) return out;
  for (const Range& d : it->second.declared.All()) {
    for (const Range& gap : it->second.received.Gaps(d.start, d.end)) out.push_back(gap);
  }
  return out;
}

void PageStore::Close(Status why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = std::move(why);
  }
  Notify();
}

uint64_t PageStore::pages_received() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pages_;
}

std::vector<int> PageStore::pids() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int> out;
  for (const auto& [pid, p] : procs_) out.push_back(pid);
  return out;
}

}  // namespace stasis::mem
