// timerfds (anon_inode:[timerfd]): clock, period, time to the next expiry,
// TFD_TIMER_ABSTIME / TFD_TIMER_CANCEL_ON_SET, expirations not yet read,
// status flags.
//
// Time to the next expiry comes from timerfd_gettime() on the stolen fd,
// not from fdinfo: for a periodic timer that expired, fdinfo shows 0 until
// someone folds the missed periods in, which gettime does (it also counts
// them into "ticks", read afterwards; no expiration is consumed).
// A relative timer resumes with the time it had left at dump: the time the
// tree spent in the image does not count, as for the tree itself. An
// absolute one (TFD_TIMER_ABSTIME) keeps its deadline, so its time in the
// image counts (a deadline passed meanwhile fires at once); a monotonic or
// boottime deadline restored in another boot (boot_id differs) becomes the
// time it had left, since those clocks restart with each boot.
// Expirations not yet read are set with TFD_IOC_SET_TICKS (Linux 3.17+
// with CONFIG_CHECKPOINT_RESTORE), added to any the new timer already had.
// Not carried: the "canceled" state of a TFD_TIMER_CANCEL_ON_SET timer
// whose clock was set (fdinfo does not show it; the restored timer is
// armed).
#pragma once

#include "kinds/fd_kind.h"

namespace stasis::kinds::timerfd {

inline constexpr const char* kName = "timerfd";
bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;

}  // namespace stasis::kinds::timerfd
