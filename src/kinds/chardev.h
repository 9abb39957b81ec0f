// Character devices without state of their own: /dev/null, /dev/zero,
// /dev/full, /dev/random, /dev/urandom. Restore opens the canonical /dev node
// for the device number, with the original flags.
#pragma once

#include "kinds/fd_kind.h"

namespace stasis::kinds::chardev {

inline constexpr const char* kName = "chardev";
bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;

}  // namespace stasis::kinds::chardev
