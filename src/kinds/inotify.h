// inotify instances (anon_inode:inotify): every watch with its number (wd),
// its mask (events plus IN_ONESHOT / IN_EXCL_UNLINK) and the watched inode,
// resolved to a path at dump, and the status flags.
//
// fdinfo names the watched inode by a file handle; the dump opens it with
// open_by_handle_at (CAP_DAC_READ_SEARCH) on the mount of its device and
// reads the path back from /proc/self/fd, checking the path leads to the
// same device and inode. Restore adds the watches by path in increasing wd
// order. The kernel hands out wds cyclically (the next one after the last
// given, never the lowest free), so a gap before a wd is crossed by adding
// and removing a watch on a scratch memfd until the next number is the one
// wanted; the IN_IGNORED events that makes are read away before the tree
// gets the fd. Where the kernel's cursor was beyond the highest live wd is
// not visible, so the tree's next new watch gets the highest live wd + 1,
// which no live watch uses.
//
// Refused: unread events in the queue (FIONREAD > 0: reading them would
// take them from the task, and nothing can queue them again), a watch on a
// filesystem that gives no file handles or on an inode no path leads to
// (deleted, or not in the dumper's mount namespace), wd gaps summing to
// more than kMaxSkippedWds. Events that happen to the watched files between
// dump and restore are not delivered.
#pragma once

#include <string_view>

#include "kinds/fd_kind.h"

namespace stasis::kinds::inotify {

inline constexpr const char* kName = "inotify";
inline constexpr int kMaxSkippedWds = 1 << 20;

bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;

// One fdinfo watch line, after the "inotify" word:
// "wd:2 ino:a72088 sdev:fe00000 mask:4000002 ignored_mask:0 fhandle-bytes:8
//  fhandle-type:1 f_handle:8820a70012558d44". Every number is hex.
struct WatchLine {
  int wd = 0;
  uint64_t ino = 0;
  uint32_t sdev = 0;  // the kernel's dev_t: major << 20 | minor
  uint32_t mask = 0;
  uint32_t ignored_mask = 0;
  bool has_handle = false;
  int handle_type = 0;
  std::string handle;  // handle bytes
};
Result<WatchLine> ParseWatchLine(std::string_view text);

}  // namespace stasis::kinds::inotify
