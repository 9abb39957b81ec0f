// Lazy restore: the tree runs before its pages are written. Each process
// gets a userfaultfd (made inside it, taken with pidfd_getfd) with its
// private anonymous VMAs registered in missing mode; a fault server
// thread resolves each fault from the page store (UFFDIO_COPY of the held
// page, waiting for it if the source declared it and has not sent it yet;
// UFFDIO_ZEROPAGE for a page the image left out as zero), and once the
// tree is released, pushes every page still held in the background. When
// nothing is held any more it unregisters the ranges and ends: the
// restorer must live until then (Wait), or the tree faults forever.
//
// Forks: a registration is not inherited (no UFFD_FEATURE_EVENT_FORK),
// and a page copied into a parent after a fork does not reach the child
// that shares it copy-on-write, so the restore fills a parent's ranges
// that a child inherits before forking it (PageStore::Fill).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "mem/page_store.h"
#include "mem/ranges.h"
#include "sys/unique_fd.h"

namespace stasis::mem {

struct LazyStats {
  uint64_t faults = 0;        // served from held pages
  uint64_t zero_faults = 0;   // served with the zero page
  uint64_t pushed_pages = 0;  // written in the background
};

class LazyPager {
 public:
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
  // The tree runs: start pushing what faults have not taken.
  void Release();
  // Until every page is in and the ranges are unregistered.
  Status Wait();
  LazyStats stats() const;

 private:
  struct Client {
    int pid;
    sys::UniqueFd uffd;
    std::vector<Range> ranges;
  };
  void Run();
  Status ServeFaults(int timeout_ms);
  Status ServeFault(Client& c);
  // Pushes one chunk; false when nothing is held any more.
  Result<bool> PushSome();
  void Finish();

  std::unique_ptr<PageStore> store_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Client>> clients_;
  sys::UniqueFd wake_;  // eventfd: a client was added, or stop
  std::atomic<bool> released_{false}, stop_{false};
  Status status_;
  LazyStats stats_;
  std::thread thread_;
};

}  // namespace stasis::mem
