// /proc/PID/pagemap (one 64-bit entry per virtual page) and /proc/PID/mem,
// as the dump's page planner and the pre-copy read them.
#pragma once

#include <sys/types.h>

#include <cstdint>

#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::sys::pagemap {

inline constexpr uint64_t kPresent = 1ull << 63;
inline constexpr uint64_t kSwapped = 1ull << 62;
inline constexpr uint64_t kFile = 1ull << 61;           // file page or shared anon
inline constexpr uint64_t kExclusive = 1ull << 56;      // mapped by this process only
inline constexpr uint64_t kPfnMask = (1ull << 55) - 1;  // visible with CAP_SYS_ADMIN

Result<UniqueFd> OpenPagemap(pid_t pid);
// /proc/PID/mem, read-only: reads what process_vm_readv may not (FOLL_FORCE),
// and without pinning the pages.
Result<UniqueFd> OpenMem(pid_t pid);
// The entries of count pages from first_page on.
Status Read(int pagemap, uint64_t first_page, uint64_t count, uint64_t* out);

}  // namespace stasis::sys::pagemap
