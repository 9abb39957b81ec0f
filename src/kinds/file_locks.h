// File locks: flock(), OFD (F_OFD_SETLK) and POSIX (F_SETLK) record locks
// on the regular files the tree holds (regular_file.h carries them in its
// state).
//
// Who owns a lock decides where it is retaken:
// - flock and OFD locks belong to the open file description: the fdinfo of
//   every fd of that description shows them. The restorer takes OFD locks
//   on the new description before it is handed to the tree. A flock is
//   taken inside the tree instead, by an injected flock() in the process
//   that took it (when that process still holds the description, else in
//   the first process that installs it): /proc/locks names a flock by the
//   pid that took it and hides it from any pid namespace where that pid
//   does not exist, as the restorer's does not exist in the tree's.
// - POSIX locks belong to a process (its fd table) and the kernel drops all
//   of them when the process closes ANY fd of the file. /proc/locks names
//   the owner by pid. Every File of the inode carries the POSIX locks of
//   every process of the tree on it; each is retaken inside its owner by
//   an injected fcntl(F_SETLK) after each install of an fd of that inode
//   (installing one goes through a temporary fd that is closed, which
//   drops them), through whichever installed fd has the access mode the
//   lock type needs.
//
// Refused: leases and delegations (F_SETLEASE), any other lock class,
// a lock request blocked in the tree ("->" in /proc/locks; a task the dump
// stopped in F_SETLKW has left the wait queue and restarts its fcntl after
// restore, so this only shows for a task the dump does not hold stopped),
// and POSIX locks this file's fdinfo shows that /proc/locks does not list
// under the file's device and inode (a filesystem whose stat st_dev is not
// the superblock's, like btrfs subvolumes).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "file_locks.pb.h"
#include "kinds/context.h"

namespace stasis::kinds::file_locks {

// One line of /proc/locks or the text after "lock:" in fdinfo, e.g.
// "2: -> POSIX  ADVISORY  WRITE 3040 fe:00:10952903 100 EOF".
struct LockLine {
  int id = 0;
  bool blocked = false;    // "->": a request waiting for this lock, not a held lock
  std::string lock_class;  // POSIX, OFDLCK, FLOCK, LEASE, DELEG, ACCESS, UNKNOWN
  std::string type;        // READ, WRITE or UNLCK
  int64_t pid = 0;         // -1 for OFD locks; the locker for flock
  bool has_inode = false;  // false for "<none>:0"
  uint32_t dev_major = 0;  // the superblock's device, hex in the text
  uint32_t dev_minor = 0;
  uint64_t ino = 0;
  uint64_t start = 0;
  bool to_eof = false;  // end column "EOF"
  uint64_t end = 0;     // inclusive
};

Result<LockLine> ParseLockLine(std::string_view text);
Result<std::vector<LockLine>> ParseProcLocks(std::string_view text);

// Dump: the locks to carry with the regular file `in`: its description's
// OFD and flock locks (its fdinfo) and the POSIX locks of the tree's
// processes on its inode (/proc/locks). Refuses what cannot be carried.
Result<std::vector<image::FileLock>> Dump(DumpContext& ctx, const FdDumpInput& in);

// Restore, in the restorer: takes the description's OFD locks on `fd`, the
// new description.
Status TakeOfdLocks(int fd, const google::protobuf::RepeatedPtrField<image::FileLock>& locks,
                    const std::string& what);

// Restore, inside process `proc` right after an fd of the file was
// installed at `fd`: retakes the POSIX locks it owns on the file, and the
// description's flock if it is the flock's owner (or the owner is not in
// the tree).
Status TakeProcessLocks(RemoteTask& task, const image::Process& proc, int fd,
                        const google::protobuf::RepeatedPtrField<image::FileLock>& locks);

}  // namespace stasis::kinds::file_locks
