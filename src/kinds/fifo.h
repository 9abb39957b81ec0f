// Named pipes (FIFOs) opened by path: each description's access mode and
// status flags, the buffer size, and the unread bytes, read with tee() from
// a reopened read end so the task keeps them and carried once per FIFO.
//
// Restore opens the FIFO by its path once O_RDWR (which never waits for a
// peer) to hold the buffer while it refills it and opens each description
// through /proc/self/fd with O_NONBLOCK, then sets the task's status flags.
// Whether the other end is inside the tree or not does not matter: a
// FIFO's ends meet by path.
//
// Refused: an unlinked FIFO, locks on a FIFO, and at restore a FIFO that
// already holds unread bytes (someone outside the tree still has it open,
// and its data would be doubled).
#pragma once

#include "kinds/fd_kind.h"

namespace stasis::kinds::fifo {

inline constexpr const char* kName = "fifo";
bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;

}  // namespace stasis::kinds::fifo
