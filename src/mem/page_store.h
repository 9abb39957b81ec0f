// The restore side's pages: a store that takes page runs in rounds, before
// or after the address space they belong to exists, and knows what is
// still to come.
//  - A run for a process whose address space does not exist yet is held (a
//    copy); once the process is attached, what is held is written through
//    its sink and later runs go straight to it (eager delivery), or stay
//    held until asked for (on-demand delivery: the lazy pager's faults and
//    background push, lazy_pager.h).
//  - A later run replaces the pages an earlier one gave, whatever the
//    overlap.
//  - A source may declare the ranges it will send (its plan); Missing()
//    is what was declared and not received yet. An image read whole
//    declares nothing, so nothing is ever missing.
// Thread-safe: a pager thread fills while the restore adds.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "image/stream.h"
#include "mem/ranges.h"
#include "process.pb.h"
#include "sys/result.h"

namespace stasis::mem {

// Where a process's pages are written once its address space exists.
class PageSink {
 public:
  virtual ~PageSink() = default;
  virtual Status Write(uint64_t addr, const uint8_t* data, uint64_t len) = 0;
};

// process_vm_writev into a process (as its tracer, mappings without write
// access included).
class ProcessMemorySink : public PageSink {
 public:
  explicit ProcessMemorySink(pid_t host_pid) : host_pid_(host_pid) {}
  Status Write(uint64_t addr, const uint8_t* data, uint64_t len) override;

 private:
  pid_t host_pid_;
};

enum class Delivery {
  kEager,     // held pages written at attach, later ones as they come
  kOnDemand,  // held until Fill asks for them
};

class PageStore {
 public:
  PageStore() = default;
  PageStore(const PageStore&) = delete;
  PageStore& operator=(const PageStore&) = delete;

  // Pages of proc (by its image PID) may come, within its VMAs that carry
  // pages; a run anywhere else is a corrupt image.
  void Expect(const image::Process& proc);
  // The source will send the pages of [start, end) of pid.
  Status Declare(int pid, uint64_t start, uint64_t end);
  // One page run of some round. Its bytes are copied if they must be held,
  // unless owner keeps them valid (an image mapped whole).
  Status Add(const image::PageRun& run, std::shared_ptr<const void> owner = nullptr);
  // The address space of pid exists (its VMAs mapped): its pages go
  // through sink from now on.
  Status Attach(int pid, std::unique_ptr<PageSink> sink, Delivery delivery = Delivery::kEager);
  // On-demand delivery: writes the held pages of [start, end) through the
  // sink and forgets them; returns the ranges written. With wait, first
  // waits until nothing of [start, end) is missing (or Close).
  Result<std::vector<Range>> Fill(int pid, uint64_t start, uint64_t end, bool wait);
  // Without waiting: true when nothing of [start, end) of pid is missing;
  // false while some is and the source is open; once closed with some of
  // it still missing, why (kCorrupt when the source said it was done).
  Result<bool> Arrived(int pid, uint64_t start, uint64_t end) const;
  // Called after every Add and at Close, outside the store's lock, on the
  // thread that added: the lazy pager wakes its parked faults with it
  // (lazy_pager.h). Set it before pages come; null to stop.
  void OnArrival(std::function<void()> notify);
  // Some range still held for pid, for a background push; none when every
  // received page was delivered.
  std::optional<Range> NextHeld(int pid) const;
  // Forgets what is held for pid (its process is gone).
  void Drop(int pid);
  // What pid's source declared and has not sent yet.
  std::vector<Range> Missing(int pid) const;
  // The source is done (or failed): waits for missing pages end with why.
  void Close(Status why);
  // Pages in every run added, repeats included (what the image's trailer
  // counts).
  uint64_t pages_received() const;
  std::vector<int> pids() const;

 private:
  struct Held {
    uint64_t end;
    const uint8_t* data;
    std::shared_ptr<const void> owner;
  };
  struct Process {
    std::map<uint64_t, uint64_t> carrying;  // VMAs that carry pages: start -> end
    RangeSet declared, received;
    std::map<uint64_t, Held> held;  // by start, disjoint
    std::unique_ptr<PageSink> sink;
    Delivery delivery = Delivery::kEager;
  };

  Result<Process*> Find(int pid);
  static Status CheckRun(int pid, const Process& p, uint64_t addr, uint64_t end);
  static void Forget(Process& p, uint64_t start, uint64_t end);
  static Status WriteHeld(Process& p, uint64_t start, uint64_t end, std::vector<Range>* written);
  bool MissingIn(const Process& p, uint64_t start, uint64_t end) const;
  Error NeverCame(int pid, uint64_t start, uint64_t end) const;
  void Notify();

  mutable std::mutex mu_;
  std::condition_variable arrived_;
  std::map<int, Process> procs_;
  uint64_t pages_ = 0;
  std::optional<Status> closed_;
  std::function<void()> on_arrival_;
};

}  // namespace stasis::mem
