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
// Refused: memfds with seals, objects outside tmpfs (deleted files on disk,
// hugetlbfs), SysV shm. Named tmpfs files that still exist are ordinary
// files (regular_file.h, memory.h): their contents stay in the file.
#pragma once

#include <vector>

#include "image/stream.h"
#include "kinds/context.h"

namespace stasis::kinds::shmem {

inline constexpr const char* kName = "shmem";

// fd side (an FdKind).
bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);

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

}  // namespace stasis::kinds::shmem
