// Shared-memory objects: shared anonymous memory ("/dev/zero (deleted)"),
// unlinked tmpfs files (POSIX semaphores and shm, multiprocessing arenas,
// tempfile.TemporaryFile in /dev/shm) and memfds, whether the tree holds
// them as fds, maps them MAP_SHARED, or both. One object has one identity
// (dev, ino) however many open file descriptions (File records) and
// mappings refer to it; its contents are carried once, as page records
// owned by its first File (image::kShmemPageOwner).
//
// Dump reads contents through /proc/PID/fd/N or /proc/PID/map_files/<range>
// (CAP_SYS_ADMIN), skipping holes and zero pages. Restore recreates the
// object in the restorer — a real shared anonymous mapping, a tmpfs file of
// the same name unlinked again, or a memfd of the same name — and every
// further description reopens it through /proc/self/fd.
// A memfd keeps its name, permission bits, owner and seals. Seals go back
// on once the contents are written, before the tree maps the object, except
// F_SEAL_FUTURE_WRITE (without F_SEAL_WRITE) on an object the tree maps
// writably (VmFlags "mw"): a mapping made before that seal stays writable,
// so those seals are added after every task has mapped it (AddSeals).
// Refused: seals unknown to Stasis, objects outside tmpfs (deleted files on
// disk, hugetlbfs, MFD_HUGETLB memfds), SysV shm. Named tmpfs files that
// still exist are ordinary files (regular_file.h, memory.h): their contents
// stay in the file.
#pragma once

#include <fcntl.h>

#include <functional>
#include <vector>

#include "image/stream.h"
#include "kinds/fd_kind.h"

namespace stasis::kinds::shmem {

inline constexpr const char* kName = "shmem";

// fd side (an FdKind).
bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;

// Mapping side: true for a shared mapping whose object is carried here.
bool IsShmemPath(const std::string& path);

struct TaskVmas {
  pid_t host_pid;
  image::Process* proc;
};

// Gives every SHMEM VMA of the tree its object's File (one found through an
// fd, or a new mapping-only File with an id from *next_id on), and lists
// each object's content source once in *sources.
Status CollectObjects(const std::vector<TaskVmas>& tasks, uint64_t* next_id,
                      std::vector<image::File>* files, std::vector<ContentSource>* sources);
Status WriteContents(const std::vector<ContentSource>& sources, image::Writer& writer);

// Writes one page record of contents into the object behind fd.
Status FillPages(int fd, const image::PageRun& run, uint64_t object_size);

// Seals (Debian 12's headers stop at F_SEAL_FUTURE_WRITE; F_SEAL_EXEC is 6.3+).
inline constexpr uint32_t kSealFutureWrite = 0x10;
inline constexpr uint32_t kSealExec = 0x20;
inline constexpr uint32_t kKnownSeals =
    F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | kSealFutureWrite | kSealExec;

enum class SealTime {
  kBeforeMapping,  // after the contents, before any task maps the object
  kAfterMapping,   // once every task has mapped it
};
// When the seals of an object go on. mapped_may_write: some VMA of the tree
// maps it shared with VM_MAYWRITE (smaps "mw"), which a seal forbidding
// writes would refuse or would make impossible to map again.
SealTime WhenToSeal(uint32_t seals, bool mapped_may_write);

// Adds, once per object, the seals due at `when`, through fd_of(file id),
// the restorer's fd of a File.
using FdOfFile = std::function<Result<int>(uint64_t file_id)>;
// Dump side: refuses an object sealed F_SEAL_FUTURE_WRITE between two of its
// mappings (one with VM_MAYWRITE, one without): a restore can only make
// all of them before its seal or all after.
Status AddSeals(const std::vector<image::File>& files, const std::vector<image::Process>& procs,
                const FdOfFile& fd_of, SealTime when);
Status CheckSealedMappings(const std::vector<TaskVmas>& tasks,
                           const std::vector<image::File>& files);

}  // namespace stasis::kinds::shmem
