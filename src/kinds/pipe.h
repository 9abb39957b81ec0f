// Pipes (pipe:[ino]) whose ends are all inside the dumped tree, or whose
// other end no process holds at all ("widowed"): each end's flags, the
// pipe's size and its unread data, read with tee() so the task keeps it.
// Refused: a pipe with an end held outside the tree, packet-mode pipes.
#pragma once

#include "kinds/fd_kind.h"

namespace stasis::kinds::pipe {

inline constexpr const char* kName = "pipe";
bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;

// The unread bytes of the pipe or FIFO behind in.local, left in place: tee()
// from a fresh read description into a scratch pipe of pipe_size bytes.
Result<std::string> PeekPipeData(const FdDumpInput& in, uint32_t pipe_size);

}  // namespace stasis::kinds::pipe
