// Regular files and directories opened by path: path, access mode, status
// flags and offset. Restore reopens the path and refuses a file whose size
// changed since the dump. Deleted files and files holding locks are refused
// at dump (not carried yet).
#pragma once

#include "kinds/context.h"

namespace stasis::kinds::regular_file {

inline constexpr const char* kName = "regular";
bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);

}  // namespace stasis::kinds::regular_file
