// Eventfds (anon_inode:[eventfd]): the 64-bit counter, semaphore mode and
// status flags, all read from fdinfo so the counter is not consumed.
// Refused: a kernel whose fdinfo does not show eventfd-semaphore (< 6.5),
// a counter at 2^64 - 1 (only in-kernel signalling reaches it; a write
// cannot recreate it).
#pragma once

#include "kinds/fd_kind.h"

namespace stasis::kinds::eventfd {

inline constexpr const char* kName = "eventfd";
bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;

}  // namespace stasis::kinds::eventfd
