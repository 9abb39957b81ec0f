#include "mem/lazy_pager.h"

#include <fmt/format.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>

#include "image/stream.h"
#include "mem/prefetch.h"
#include "sys/uffd.h"

namespace stasis::mem {
namespace {

constexpr uint64_t kPage = image::kPageSize;
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
    : store_(std::move(store)), wake_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  store_->OnArrival([this] { Wake(); });
}

LazyPager::~LazyPager() {
  stop_ = true;
  store_->OnArrival(nullptr);
  // A fault waiting for a page that will not come now.
  store_->Close(Error(ErrorCode::kFailed, "the lazy pager stopped"));
  Wake();
  if (thread_.joinable()) thread_.join();
}

void LazyPager::Wake() {
  uint64_t one = 1;
  if (wake_.valid()) (void)!write(wake_.get(), &one, sizeof one);
}

Status LazyPager::Serve(int pid, sys::UniqueFd uffd, std::vector<Range> ranges) {
  if (!wake_.valid()) return Error::Errno("eventfd for the lazy pager");
  {
    std::lock_guard<std::mutex> lock(mu_);
    clients_.push_back(std::make_unique<Client>(Client{pid, std::move(uffd), std::move(ranges)}));
  }
  Wake();
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

std::vector<int> LazyPager::uffds() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int> out;
  for (const auto& c : clients_) out.push_back(c->uffd.get());
  return out;
}

void LazyPager::OnMissing(Ask ask) {
  std::lock_guard<std::mutex> lock(mu_);
  ask_ = std::move(ask);
}

void LazyPager::Pause() {
  std::lock_guard<std::mutex> lock(mu_);
  paused_ = true;
}

void LazyPager::Resume() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    paused_ = false;
  }
  // The fault thread asks: asks only ever come from it.
  ask_again_ = true;
  Wake();
}

void LazyPager::Release() {
  released_ = true;
  Wake();
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

// The poll's timeout only paces the loop: a parked fault has no deadline.
void LazyPager::Run() {
  bool idle = true;
  while (!stop_) {
    Status served = ServeFaults(idle ? 100 : 0);
    Status resolved = ResolveParked();
    if (ask_again_.exchange(false)) AskAgain();
    Result<Push> push = released_ ? PushSome() : Result<Push>(Push::kWaiting);
    std::lock_guard<std::mutex> lock(mu_);
    for (Status* s : {&served, &resolved}) {
      if (!s->ok() && status_.ok()) status_ = std::move(*s);
    }
    // The store was closed with pages missing, or a push failed: nothing
    // will get better.
    if (!push.ok()) {
      if (status_.ok()) status_ = std::move(push).error();
      break;
    }
    if (*push == Push::kDone) break;
    idle = *push == Push::kWaiting;
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
    if (fds[i].revents & POLLIN) STASIS_TRY(ReadFaults(*who[i]));
  }
  return Ok();
}

Status LazyPager::ReadFaults(Client& c) {
  for (;;) {
    struct uffd_msg msg;
    ssize_t got = read(c.uffd.get(), &msg, sizeof msg);
    if (got < 0 && (errno == EAGAIN || errno == EINTR)) return Ok();
    if (got != static_cast<ssize_t>(sizeof msg)) {
      return Error::Errno(fmt::format("pid {}: read its userfaultfd", c.pid));
    }
    if (msg.event != UFFD_EVENT_PAGEFAULT) continue;
    STASIS_TRY(OnFault(c, msg.arg.pagefault.address & ~(kPage - 1), Clock::now()));
  }
}

// Served now when its page is here (or will never come from the source:
// a zero page), else parked until it arrives.
Status LazyPager::OnFault(Client& c, uint64_t page, Clock::time_point since) {
  auto in = std::find_if(c.ranges.begin(), c.ranges.end(),
                         [page](const Range& r) { return r.start <= page && page < r.end; });
  if (in == c.ranges.end()) return Ok();  // not ours: cannot happen for a registered range
  Parked fault{&c, page, *in, since};
  Result<bool> here = store_->Arrived(c.pid, page, page + kPage);
  if (!here.ok()) {
    return Error(here.error()).Context(fmt::format("pid {}: fault at {:#x}", c.pid, page));
  }
  if (*here) return Resolve(fault, /*remote=*/false);
  parked_.push_back(fault);
  hot_.push_back({c.pid, PrefetchWindow(page, *in)});
  AskFor(c.pid, page);
  return Ok();
}

// Copies the held pages of the fault's window (its page among them, unless
// a neighbour's copy brought it already), or maps the zero page.
Status LazyPager::Resolve(const Parked& f, bool remote) {
  int pid = f.client->pid;
  Range w = PrefetchWindow(f.page, f.range);
  Result<std::vector<Range>> wrote = store_->Fill(pid, w.start, w.end, /*wait=*/false);
  if (!wrote.ok() && Gone(wrote.error())) return Ok();
  if (!wrote.ok()) {
    return Error(wrote.error()).Context(fmt::format("pid {}: fault at {:#x}", pid, f.page));
  }
  uint64_t pages = 0;
  bool copied = false;
  for (const Range& r : *wrote) {
    pages += (r.end - r.start) / kPage;
    copied = copied || (r.start <= f.page && f.page < r.end);
  }
  // A remote fault's page was sent: if this copy did not bring it, a
  // neighbour's did, and this only wakes the thread.
  bool zero = !copied && !remote;
  if (!copied) {
    Status woken = sys::uffd::ZeroPage(f.client->uffd.get(), f.page, f.page + kPage);
    if (!woken.ok() && !Gone(woken.error())) return woken;
  }
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - f.since).count();
  std::lock_guard<std::mutex> lock(mu_);
  ++(zero ? stats_.zero_faults : stats_.faults);
  if (remote) ++stats_.remote_faults;
  stats_.prefetched_pages += pages - (copied ? 1 : 0);
  stats_.blocktime_ms += ms;
  stats_.max_block_ms = std::max(stats_.max_block_ms, ms);
  return Ok();
}

void LazyPager::AskFor(int pid, uint64_t page) {
  if (!asked_.insert({pid, page}).second) return;
  Ask ask;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (paused_) return;  // kept in asked_: Resume asks again
    ask = ask_;
  }
  if (ask) ask(pid, page);
}

// The source came back: what was asked before may have been lost with the
// link.
void LazyPager::AskAgain() {
  std::set<std::pair<int, uint64_t>> pages;
  pages.swap(asked_);
  for (const auto& [pid, page] : pages) AskFor(pid, page);
}

Status LazyPager::ResolveParked() {
  for (size_t i = 0; i < parked_.size();) {
    Parked f = parked_[i];
    Result<bool> here = store_->Arrived(f.client->pid, f.page, f.page + kPage);
    if (!here.ok()) {
      // Closed: the rest will not come either. Their threads stay blocked
      // until the ranges are unregistered or the tree is killed.
      parked_.clear();
      asked_.clear();
      return Error(here.error())
          .Context(fmt::format("pid {}: fault at {:#x}", f.client->pid, f.page));
    }
    if (!*here) {
      ++i;
      continue;
    }
    parked_.erase(parked_.begin() + static_cast<ptrdiff_t>(i));
    asked_.erase({f.client->pid, f.page});
    STASIS_TRY(Resolve(f, /*remote=*/true));
  }
  return Ok();
}

// Pages that arrived for the windows of remote faults, oldest fault first:
// its thread is likely to touch them next. True when something was pushed.
Result<bool> LazyPager::PushHot() {
  for (auto it = hot_.begin(); it != hot_.end();) {
    auto [pid, w] = *it;
    Result<std::vector<Range>> wrote = store_->Fill(pid, w.start, w.end, /*wait=*/false);
    if (!wrote.ok() && !Gone(wrote.error())) return std::move(wrote).error();
    if (!wrote.ok()) {
      store_->Drop(pid);
      gone_.insert(pid);
    }
    Result<bool> whole = store_->Arrived(pid, w.start, w.end);
    // Once closed, the background push settles what is left.
    bool finished = !wrote.ok() || !whole.ok() || *whole;
    it = finished ? hot_.erase(it) : std::next(it);
    if (!wrote.ok() || wrote->empty()) continue;
    std::lock_guard<std::mutex> lock(mu_);
    for (const Range& r : *wrote) stats_.pushed_pages += (r.end - r.start) / kPage;
    return true;
  }
  return false;
}

Result<LazyPager::Push> LazyPager::PushSome() {
  if (STASIS_TRY(PushHot())) return Push::kPushed;
  std::vector<int> pids;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& c : clients_) {
      if (gone_.count(c->pid) == 0) pids.push_back(c->pid);
    }
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
      gone_.insert(pid);
      return Push::kPushed;
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (const Range& r : *wrote) stats_.pushed_pages += (r.end - r.start) / kPage;
    return Push::kPushed;
  }
  // Nothing held: done unless the source still owes pages.
  for (int pid : pids) {
    if (!STASIS_TRY(store_->Arrived(pid, 0, UINT64_MAX))) return Push::kWaiting;
  }
  return Push::kDone;
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
