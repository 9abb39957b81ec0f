// Shared-memory objects mapped MAP_SHARED by the tree: shared anonymous
// memory ("/dev/zero (deleted)"), unlinked tmpfs files (POSIX semaphores
// "/dev/shm/sem.* (deleted)") and memfds. Each object is one File of kind
// "shmem", however many processes map it; its contents are carried once, as
// page records owned by the File (image::kShmemPageOwner).
//
// Dump reads an object through /proc/PID/map_files/<range> (CAP_SYS_ADMIN),
// skipping holes. Restore recreates it in the restorer — a real shared
// anonymous mapping, a tmpfs file of the same name unlinked again, or a
// memfd of the same name — fills it, and the puppets map it.
// Named tmpfs files that still exist are mapped by path (memory.cc): their
// contents stay in the file. SysV shm and objects on hugetlbfs are refused.
#pragma once

#include <vector>

#include "image/stream.h"
#include "kinds/context.h"

namespace stasis::kinds::shmem {

inline constexpr const char* kName = "shmem";

// True for a shared mapping whose object is carried here (by its maps path).
bool IsShmemPath(const std::string& path);

// Where to read an object from: one mapping of it.
struct ObjectSource {
  uint64_t file_id;
  pid_t host_pid;
  uint64_t start, end;
  uint64_t size;
};

struct TaskVmas {
  pid_t host_pid;
  image::Process* proc;
};

// One File per object across the tree (ids from *next_id on); sets
// shmem_file_id on every SHMEM VMA.
Status CollectObjects(const std::vector<TaskVmas>& tasks, uint64_t* next_id,
                      std::vector<image::File>* files, std::vector<ObjectSource>* sources);
Status WriteContents(const std::vector<ObjectSource>& sources, image::Writer& writer);

// FdKind-style restore: a new object, sized, still empty.
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Writes one page record of contents into the object.
Status FillPages(int fd, const image::PageRun& run, uint64_t object_size);

}  // namespace stasis::kinds::shmem
