#include "mem/lazy_pager.h"

#include <fmt/format.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>

#include "image/stream.h"
#include "sys/uffd.h"

namespace stasis::mem {
namespace {

constexpr uint64_t kPage = image::kPageSize;
// A fault brings the held pages around it (the fault round trip, not the
// copy, is what costs: kernel-notes.md measured 4 KiB faults at 0.1-0.2 GB/s).
constexpr uint64_t kFaultSpan = 64 * 1024;
constexpr uint64_t kPushSpan = 2 * 1024 * 1024;

bool Gone(const Error& e) { return e.errnum() == ESRCH; }

// Registered ranges through the uffd, the rest with process_vm_writev.
class RoutedSink : public PageSink {
 public:
  RoutedSink(int uffd, const std::vector<Range>& lazy, pid_t host_pid)
      : uffd_(uffd), memory_(host_pid) {
    for (const Range& r : lazy) lazy_.Add(r.start, r.end);
  }
  Status Write(uint64_t addr, const uint8_t* data, uint64_t len) override {
    uint64_t end = addr + len;
    for (const Range& r : lazy_.Within(addr, end)) {
      for (uint64_t at = r.start; at < r.end;) {
        at += STASIS_TRY(sys::uffd::Copy(uffd_, at, data + (at - addr), r.end - at));
        if (at == r.end) break;
        // Something brought that page in before us (a huge page around the
        // VMA's first page, with THP on for every mapping): no fault waits
        // for it, and the plain write puts the right contents there.
        STASIS_TRY(memory_.Write(at, data + (at - addr), kPage));
        at += kPage;
      }
    }
    for (const Range& r : lazy_.Gaps(addr, end)) {
      STASIS_TRY(memory_.Write(r.start, data + (r.start - addr), r.end - r.start));
    }
    return Ok();
  }

 private:
  int uffd_;
  RangeSet lazy_;
  ProcessMemorySink memory_;
};

}  // namespace

LazyPager::LazyPager(std::unique_ptr<PageStore> store)
    : store_(std::move(store)), wake_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

LazyPager::~LazyPager() {
  stop_ = true;
  // A fault waiting for a page that will not come now.
  store_->Close(Error(ErrorCode::kFailed, "the lazy pager stopped"));
  uint64_t one = 1;
  if (wake_.valid()) (void)!write(wake_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
}

Status LazyPager::Serve(int pid, sys::UniqueFd uffd, std::vector<Range> ranges) {
  if (!wake_.valid()) return Error::Errno("eventfd for the lazy pager");
  {
    std::lock_guard<std::mutex> lock(mu_);
    clients_.push_back(std::make_unique<Client>(Client{pid, std::move(uffd), std::move(ranges)}));
  }
  uint64_t one = 1;
  (void)!write(wake_.get(), &one, sizeof one);
  if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
  return Ok();
}

std::unique_ptr<PageSink> LazyPager::SinkFor(int pid, pid_t host_pid) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& c : clients_) {
    if (c->pid == pid) return std::make_unique<RoutedSink>(c->uffd.get(), c->ranges, host_pid);
  }
  return std::make_unique<ProcessMemorySink>(host_pid);
}

void LazyPager::Release() {
  released_ = true;
  uint64_t one = 1;
  (void)!write(wake_.get(), &one, sizeof one);
  if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
}

Status LazyPager::Wait() {
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

LazyStats LazyPager::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void LazyPager::Run() {
  while (!stop_) {
    bool pushing = released_;
    Status served = ServeFaults(pushing ? 0 : 100);
    Result<bool> more = pushing ? PushSome() : Result<bool>(true);
    std::lock_guard<std::mutex> lock(mu_);
    if (!served.ok() && status_.ok()) status_ = std::move(served);
    if (!more.ok() && status_.ok()) status_ = std::move(more).error();
    if (more.ok() && !more.value()) break;
  }
  Finish();
}

Status LazyPager::ServeFaults(int timeout_ms) {
  std::vector<pollfd> fds = {{wake_.get(), POLLIN, 0}};
  std::vector<Client*> who = {nullptr};
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& c : clients_) {
      fds.push_back({c->uffd.get(), POLLIN, 0});
      who.push_back(c.get());
    }
  }
  int n = poll(fds.data(), fds.size(), timeout_ms);
  if (n < 0) return errno == EINTR ? Ok() : Error::Errno("poll the lazy pager's userfaultfds");
  uint64_t count;
  if (fds[0].revents & POLLIN) (void)!read(wake_.get(), &count, sizeof count);
  for (size_t i = 1; i < fds.size(); ++i) {
    if (fds[i].revents & POLLIN) STASIS_TRY(ServeFault(*who[i]));
  }
  return Ok();
}

Status LazyPager::ServeFault(Client& c) {
  for (;;) {
    struct uffd_msg msg;
    ssize_t got = read(c.uffd.get(), &msg, sizeof msg);
    if (got < 0 && (errno == EAGAIN || errno == EINTR)) return Ok();
    if (got != static_cast<ssize_t>(sizeof msg)) {
      return Error::Errno(fmt::format("pid {}: read its userfaultfd", c.pid));
    }
    if (msg.event != UFFD_EVENT_PAGEFAULT) continue;
    uint64_t page = msg.arg.pagefault.address & ~(kPage - 1);
    auto in = std::find_if(c.ranges.begin(), c.ranges.end(),
                           [page](const Range& r) { return r.start <= page && page < r.end; });
    if (in == c.ranges.end()) continue;  // not ours: cannot happen for a registered range
    uint64_t from = std::max(in->start, page & ~(kFaultSpan - 1));
    uint64_t to = std::min(in->end, from + kFaultSpan);
    Result<std::vector<Range>> wrote = store_->Fill(c.pid, from, to, /*wait=*/true);
    if (!wrote.ok() && Gone(wrote.error())) continue;
    if (!wrote.ok()) {
      return Error(wrote.error()).Context(fmt::format("pid {}: fault at {:#x}", c.pid, page));
    }
    bool copied = std::any_of(wrote->begin(), wrote->end(),
                              [page](const Range& r) { return r.start <= page && page < r.end; });
    std::lock_guard<std::mutex> lock(mu_);
    if (copied) {
      ++stats_.faults;
      continue;
    }
    ++stats_.zero_faults;
    Status zero = sys::uffd::ZeroPage(c.uffd.get(), page, page + kPage);
    if (!zero.ok() && !Gone(zero.error())) return zero;
  }
}

Result<bool> LazyPager::PushSome() {
  std::vector<int> pids;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& c : clients_) pids.push_back(c->pid);
  }
  for (int pid : pids) {
    std::optional<Range> held = store_->NextHeld(pid);
    if (!held) continue;
    uint64_t end = std::min(held->end, held->start + kPushSpan);
    Result<std::vector<Range>> wrote = store_->Fill(pid, held->start, end, /*wait=*/false);
    if (!wrote.ok() && !Gone(wrote.error())) return std::move(wrote).error();
    if (!wrote.ok()) {
      // The process is gone: what it held will never be needed.
      store_->Drop(pid);
      return true;
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (const Range& r : *wrote) stats_.pushed_pages += (r.end - r.start) / kPage;
    return true;
  }
  return false;
}

// Every page is in: unregistering lets the kernel fill what is left (zero
// pages) itself, and closing the uffds leaves nothing of ours in the tree.
void LazyPager::Finish() {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& c : clients_) {
    for (const Range& r : c->ranges) (void)sys::uffd::Unregister(c->uffd.get(), r.start, r.end);
  }
  clients_.clear();
}

}  // namespace stasis::mem
