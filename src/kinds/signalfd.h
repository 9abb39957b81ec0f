// signalfds (anon_inode:[signalfd]): the signal mask (fdinfo "sigmask") and
// the status flags. The signals it reads are the process's pending signals,
// which kinds/signals carries. Nothing is refused.
#pragma once

#include "kinds/fd_kind.h"

namespace stasis::kinds::signalfd {

inline constexpr const char* kName = "signalfd";
bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;

}  // namespace stasis::kinds::signalfd
