// The tree's clocks in the manifest (image::Clocks), so that a restore on
// another host can make its CLOCK_MONOTONIC and CLOCK_BOOTTIME go on from
// where they were (restore/spawn.h). Needs only /proc; the tree is frozen.
#pragma once

#include <sys/types.h>

#include <vector>

#include "process.pb.h"
#include "sys/result.h"

namespace stasis::checkpoint {

// Reads the clocks as the tree (`host_pids`, its root first) sees them now:
// this process's clocks less its own time namespace's offsets plus the
// root's. The tree has a namespace of its own when the root's is not this
// process's; then every live process of it must be in that one, as a process
// and for its children (a tree spread over several is refused, naming the
// process). Zombies are skipped: they have no namespaces left.
Status RecordClocks(const std::vector<pid_t>& host_pids, image::Clocks* clocks);

}  // namespace stasis::checkpoint
