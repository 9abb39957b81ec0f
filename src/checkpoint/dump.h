// stasis dump: freeze a process and all its descendants with ptrace,
// collect them through the kinds, write the image, then kill them or let
// them go on.
//
// A dump that fails leaves the task running exactly as it was: the image
// sink is aborted (image/endpoint.h: no file, or a stream without its
// trailer that readers refuse), and the task is killed only after the
// sink's Commit() succeeded.
#pragma once

#include <sys/types.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "image/endpoint.h"
#include "kinds/policy.h"
#include "mem/precopy.h"
#include "net/isolated_net.h"
#include "sys/env.h"
#include "sys/result.h"

namespace stasis::checkpoint {

// A migration's switch-over (docs/image-format.md, kept and deferred
// records): the dump writes only what the destination lacks.
struct PageHandoff {
  // Tracking since Precopy::StartTracking, rounds sent: its sent pages
  // still good at the freeze become kept records.
  mem::Precopy* precopy = nullptr;
  // Post-copy: of the rest, the pages a lazy restore serves after the tree
  // runs (mem/lazy_ranges.h) become deferred records, not page records.
  bool defer_rest = false;
};

// Pages of a process that a deferred record names: the migration source
// reads them from the still-frozen task after the image.
struct DeferredPages {
  pid_t host_pid = 0;
  uint32_t pid = 0;  // as the tree sees it (the image's)
  std::vector<mem::Range> ranges;
};

struct DumpOptions {
  pid_t pid = 0;
  // The tree goes on after the dump. Its pages are pre-copied while it runs
  // when the kernel has "uffd WP_ASYNC"; without it they are all read while
  // it is frozen (the log says so).
  bool leave_running = false;
  // A cgroup v2 directory holding the whole tree (a session's): frozen while
  // the tree is seized, so no task runs or forks in between.
  std::string freeze_cgroup;
  // Recorded in the manifest so that restore makes the tree a session again.
  std::string session_name;
  std::vector<std::string> session_command;
  // An isolated session (--net=isolated): its network goes into the image,
  // its tasks may live in its network namespace, and its host link is the
  // network lock (net/session_dump.h).
  pid_t session_init_pid = 0;
  std::optional<net::NetConfig> session_net;
  // Objects tied to the outside of the tree the user lets through.
  kinds::DumpPolicy policy;
  // A migration's switch-over; nullptr for an ordinary dump. Not with
  // leave_running (kInvalid).
  const PageHandoff* handoff = nullptr;
  // With handoff: called once the image is written (trailer included) and
  // before the sink's Commit(), with every process that has deferred pages;
  // the tree is still frozen (seized) then and until Commit() returns. A
  // failure fails the dump (the tree runs on).
  std::function<Status(const std::vector<DeferredPages>&)> on_deferred;
  // With handoff: set before the sink's Commit() to what makes the frozen
  // tree die with this process from then on (PTRACE_O_EXITKILL on every
  // task). A migration calls it just before it sends its commit: from that
  // point the tree must never run here again, even if this process dies
  // (its tracees would otherwise be let go, and run beside the
  // destination's copy).
  std::function<Status()>* arm_exit_kill = nullptr;
};

struct DumpStats {
  double frozen_ms = 0;  // from seize until the task was killed or released
  double total_ms = 0;
  uint64_t image_bytes = 0;     // written to the sink
  uint64_t resident_bytes = 0;  // present private pages found
  uint64_t pages_written = 0;
  uint64_t zero_pages = 0;
  size_t processes = 0;
  // --leave-running: pages taken from the copy made while the tree ran, and
  // pages read while it was frozen.
  uint64_t precopy_pages_kept = 0;
  uint64_t precopy_pages_read = 0;
  // With a handoff: pages in kept and in deferred records.
  uint64_t handoff_pages_kept = 0;
  uint64_t handoff_pages_deferred = 0;
};

// Reports the phases "freeze", "collect", "write", "pages" (with page bytes
// done and planned), "release" through env.Report; refuses at once, naming
// them, when env.features lacks what a dump needs. On success the sink is
// committed; on failure it is aborted.
Result<DumpStats> Dump(const sys::Env& env, const DumpOptions& options, image::ImageSink& sink);

}  // namespace stasis::checkpoint
