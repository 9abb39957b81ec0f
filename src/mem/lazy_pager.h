// Lazy restore: the tree runs before its pages are written. Each process
// gets a userfaultfd (made inside it, taken with pidfd_getfd) with its
// private anonymous VMAs registered in missing mode; a fault server
// thread resolves each fault from the page store (UFFDIO_COPY of the held
// page and its held neighbours, prefetch.h; UFFDIO_ZEROPAGE for a page the
// image left out as zero), and once the tree is released, pushes every
// page still held in the background. When nothing is held or awaited any
// more it unregisters the ranges and ends: the restorer must live until
// then (Wait), or the tree faults forever.
//
// Post-copy (migration): pages the source Declare()d and has not sent yet
// are awaited. A fault on one is parked, not waited for: the thread goes on
// serving faults on pages that are here, asks the source for the page once
// (OnMissing), and wakes the parked fault when the page arrives (the
// store's OnArrival). The background push takes what arrived for faults
// first, in fault order, then the rest in address order.
//
// Link drop: nothing here times out. While the source is away, faults on
// its pages stay parked and the tree's threads that touched them stay
// blocked; Pause() says asking is pointless now (asks are kept, not made)
// and Resume() asks again for every page still awaited, once the source
// is back (it resends what PageStore::Missing says it lacks). Only Close()
// on the store ends the waiting: Close(error) gives up, and Wait() then
// fails with that error; the tree's memory is incomplete and the caller
// must kill it.
//
// Forks: a registration is not inherited (no UFFD_FEATURE_EVENT_FORK),
// and a page copied into a parent after a fork does not reach the child
// that shares it copy-on-write, so the restore fills a parent's ranges
// that a child inherits before forking it (PageStore::Fill).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "mem/page_store.h"
#include "mem/ranges.h"
#include "sys/unique_fd.h"

namespace stasis::mem {

struct LazyStats {
  uint64_t faults = 0;            // served with a copy, remote ones included
  uint64_t zero_faults = 0;       // served with the zero page
  uint64_t remote_faults = 0;     // had to wait for the source (post-copy)
  uint64_t prefetched_pages = 0;  // copied around faults, faulting pages excluded
  uint64_t pushed_pages = 0;      // written in the background
  double blocktime_ms = 0;        // sum over faults of the time from read to wake
  double max_block_ms = 0;
};

class LazyPager {
 public:
  // Asks the source for the page at addr of pid (image PID).
  using Ask = std::function<void(int pid, uint64_t addr)>;

  explicit LazyPager(std::unique_ptr<PageStore> store);
  ~LazyPager();  // stops serving (a failed restore kills the tree first)
  LazyPager(const LazyPager&) = delete;
  LazyPager& operator=(const LazyPager&) = delete;

  PageStore& store() { return *store_; }
  // Serves faults of pid (image PID) in `ranges`, registered on uffd; the
  // thread starts with the first process.
  Status Serve(int pid, sys::UniqueFd uffd, std::vector<Range> ranges);
  // The sink for pid's pages: the uffd for its registered ranges, its
  // memory (process_vm_writev) elsewhere.
  std::unique_ptr<PageSink> SinkFor(int pid, pid_t host_pid);
  // Called on the fault thread when a fault parks on a page that is
  // declared and has not arrived, once per page until it arrives (again
  // after Resume). It must not block for long: every fault waits on it.
  // Set it before the tree runs.
  void OnMissing(Ask ask);
  // Every process's userfaultfd (borrowed), for whoever must keep them
  // registered should this process die (restore/spawn.h's guard).
  std::vector<int> uffds() const;
  // The link to the source is down (Pause) or back (Resume; asks again for
  // every page a fault awaits). See the header comment.
  void Pause();
  void Resume();
  // The tree runs: start pushing what faults have not taken.
  void Release();
  // Until every page is in and the ranges are unregistered.
  Status Wait();
  LazyStats stats() const;

 private:
  using Clock = std::chrono::steady_clock;
  struct Client {
    int pid;
    sys::UniqueFd uffd;
    std::vector<Range> ranges;
  };
  struct Parked {
    Client* client;
    uint64_t page;
    Range range;  // the registered range holding page
    Clock::time_point since;
  };
  enum class Push { kPushed, kWaiting, kDone };

  void Run();
  void Wake();
  Status ServeFaults(int timeout_ms);
  Status ReadFaults(Client& c);
  Status OnFault(Client& c, uint64_t page, Clock::time_point since);
  Status Resolve(const Parked& f, bool remote);
  void AskFor(int pid, uint64_t page);
  void AskAgain();
  Status ResolveParked();
  Result<Push> PushSome();
  Result<bool> PushHot();
  void Finish();

  std::unique_ptr<PageStore> store_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Client>> clients_;
  Ask ask_;              // under mu_
  bool paused_ = false;  // under mu_
  Status status_;        // under mu_
  LazyStats stats_;      // under mu_
  sys::UniqueFd wake_;   // eventfd: a client was added, pages arrived, stop
  std::atomic<bool> released_{false}, stop_{false}, ask_again_{false};
  // The fault thread's own.
  std::vector<Parked> parked_;
  std::set<std::pair<int, uint64_t>> asked_;
  std::deque<std::pair<int, Range>> hot_;  // windows of remote faults, in fault order
  std::set<int> gone_;                     // processes that exited: nothing to push
  std::thread thread_;
};

}  // namespace stasis::mem
