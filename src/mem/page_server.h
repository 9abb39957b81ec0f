// Post-copy, source side: serves a frozen tree's deferred pages (the ones
// the image said come later) to the destination. Requested pages first,
// each with the unsent pages of its prefetch window (prefetch.h), oldest
// request first; then the rest, process by process in address order, in
// chunks of up to kChunkBytes. Pages are read with process_vm_readv (or
// /proc/PID/mem where the task may not read them) from the tasks, which
// the dump keeps seized and frozen while this serves: their memory cannot
// change, so every page is sent once.
//
// A chunk whose read or send fails is not sent again by itself: the
// destination may hold part of it. After a link drop the destination says
// what it still lacks (PageStore::Missing) and Restart sends exactly that.
//
// Request and Restart are thread-safe (a thread reads the destination's
// requests while another sends); SendNext is called from one thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "mem/ranges.h"
#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::mem {

// A page run going to the destination (pid as the tree sees it); data is
// valid during the call only. The same alias as precopy.h's.
using SendRun =
    std::function<Status(uint32_t pid, uint64_t addr, uint64_t npages, const uint8_t* data)>;

struct PageServerStats {
  uint64_t chunks = 0;
  uint64_t pages_sent = 0;
  uint64_t requests = 0;         // Request calls
  uint64_t requested_pages = 0;  // sent ahead of their turn for a request
};

class PageServer {
 public:
  static constexpr uint64_t kChunkBytes = 1024 * 1024;

  struct Process {
    pid_t host_pid;
    uint32_t pid;               // as the tree sees it
    std::vector<Range> ranges;  // deferred: page-aligned
  };
  explicit PageServer(std::vector<Process> procs);
  PageServer(const PageServer&) = delete;
  PageServer& operator=(const PageServer&) = delete;

  // The destination faulted on addr of pid: its window goes out next. A
  // page already sent or never deferred is ignored.
  void Request(uint32_t pid, uint64_t addr);
  // Sends the next chunk; false when every page was sent.
  Result<bool> SendNext(const SendRun& send);
  // The link dropped and came back: what is sent of pid from now on is
  // still_missing (within its deferred ranges), whatever was sent before.
  void Restart(uint32_t pid, std::vector<Range> still_missing);
  // Bytes not sent yet, over every process.
  uint64_t unsent_bytes() const;
  PageServerStats stats() const;

 private:
  struct Proc {
    Process def;
    RangeSet unsent;
    size_t next_range = 0;  // the background's place in def.ranges
    sys::UniqueFd mem;      // /proc/PID/mem, opened on the first page the task may not read
  };
  struct Pending {
    uint32_t pid;
    uint64_t page;
    Range window;
  };
  struct Chunk {
    Proc* proc;
    Range range;
  };

  Proc* Find(uint32_t pid);
  std::optional<Chunk> NextRequested();
  std::optional<Chunk> NextInOrder();
  Status Read(Proc& p, Range r, uint8_t* out);

  mutable std::mutex mu_;
  std::vector<Proc> procs_;
  std::deque<Pending> requests_;
  PageServerStats stats_;
  std::unique_ptr<uint8_t[]> buffer_;  // SendNext's
};

}  // namespace stasis::mem
