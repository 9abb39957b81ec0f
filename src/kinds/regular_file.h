// Regular files and directories opened by path, and O_PATH fds of any file
// type: path, access mode, status flags (O_APPEND, O_DIRECT, O_NOATIME,
// O_PATH, O_NOFOLLOW, ...), offset, and the locks on the file (file_locks.h).
// Restore reopens the path and refuses a regular file whose size changed
// since the dump.
//
// Unlinked files on disk filesystems (st_nlink 0: deleted while open, or
// made with O_TMPFILE) carry their contents in the image, up to
// kMaxUnlinkedContents bytes of data (holes are free): restore makes a new
// O_TMPFILE in the directory the file was in (a file created and unlinked
// again where O_TMPFILE is not supported) with the same contents, size,
// permissions and owner, and every description of the inode reopens it.
// Unlinked tmpfs files are shared-memory objects (shmem.h), not these.
//
// Refused: a file larger than that; a removed directory or an unlinked file
// of another type; a path that was removed while the file keeps other links
// (its current name is unknown); files not reachable by path; lock kinds
// file_locks.h refuses.
#pragma once

#include <cstdint>

#include "image/stream.h"
#include "kinds/fd_kind.h"

namespace stasis::kinds::regular_file {

inline constexpr const char* kName = "regular";
// What one File record can hold (the record cap less room for the rest).
inline constexpr uint64_t kMaxUnlinkedContents = image::kMaxRecordPayload - (1u << 20);

bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;
// Retakes the POSIX locks the process owns on the file, and its flock
// (file_locks.h).
Status AfterInstall(RemoteTask& task, const image::Process& proc, const image::File& file, int fd);

}  // namespace stasis::kinds::regular_file
