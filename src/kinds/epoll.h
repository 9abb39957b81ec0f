// Epoll instances (anon_inode:[eventpoll]): status flags and the interest
// list, each item with its events, cookie, the fd number it was added under
// and the image file it watches (found with kcmp(KCMP_EPOLL_TFD), so items
// whose fd was closed, dup'ed or reused are still carried).
//
// Restored after the other kinds (restore_last), as items need their
// targets; a watched epoll met before its own turn is created early, empty.
// Refused: an item whose file no fd of the task holds; a one-shot item that
// fired and is not re-armed while its target (not an eventfd or epoll) is
// not ready, as an ADD would arm it for EPOLLERR/EPOLLHUP again.
// Not carried: which edge-triggered events were already reported (an
// EPOLLET item on a ready target reports once more after restore).
#pragma once

#include "kinds/fd_kind.h"

namespace stasis::kinds::epoll {

inline constexpr const char* kName = "epoll";
bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;

}  // namespace stasis::kinds::epoll
