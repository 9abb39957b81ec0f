#include "kinds/shmem.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include "fd_kinds.pb.h"

namespace stasis::kinds::shmem {
namespace {

constexpr std::string_view kDeleted = " (deleted)";
constexpr uint64_t kPage = image::kPageSize;
constexpr uint64_t kChunk = 4 << 20;

std::string MapFilesPath(pid_t pid, uint64_t start, uint64_t end) {
  return fmt::format("/proc/{}/map_files/{:x}-{:x}", pid, start, end);
}

image::ShmemState::Origin OriginOf(const std::string& path) {
  if (path == "/dev/zero (deleted)" || path.starts_with("[anon_shmem:")) {
    return image::ShmemState::ANON;
  }
  if (path.starts_with("/memfd:")) return image::ShmemState::MEMFD;
  return image::ShmemState::TMPFS_DELETED;
}

bool IsZero(const uint8_t* p) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
  uint64_t acc = 0;
  for (size_t i = 0; i < kPage / 8; ++i) acc |= w[i];
  return acc == 0;
}

// Writes [off, off+len) of the object as page records, leaving out zero pages.
Status WriteRange(int fd, uint64_t file_id, uint64_t off, uint64_t len, std::vector<uint8_t>& buf,
                  image::Writer& writer) {
  for (uint64_t done = 0; done < len; done += kChunk) {
    uint64_t n = std::min(kChunk, len - done);
    ssize_t got = pread(fd, buf.data(), n, static_cast<off_t>(off + done));
    if (got < 0) return Error::Errno("read shared memory object");
    // The object may end inside its last page (a 32-byte semaphore file).
    memset(buf.data() + got, 0, n - static_cast<size_t>(got));
    for (uint64_t i = 0; i < n / kPage;) {
      if (IsZero(buf.data() + i * kPage)) {
        ++i;
        continue;
      }
      uint64_t j = i + 1;
      while (j < n / kPage && !IsZero(buf.data() + j * kPage)) ++j;
      STASIS_TRY(writer.WritePages(image::kShmemPageOwner | static_cast<uint32_t>(file_id),
                                   off + done + i * kPage, buf.data() + i * kPage,
                                   static_cast<uint32_t>(j - i)));
      i = j;
    }
  }
  return Ok();
}

Result<sys::UniqueFd> CreateAnon(uint64_t size) {
  // A shared anonymous mapping made here is the same kind of object the
  // task had; map_files gives a file for it, which outlives the mapping.
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Error::Errno(fmt::format("shared anonymous memory of {} bytes", size));
  uint64_t start = reinterpret_cast<uint64_t>(p);
  sys::UniqueFd fd(open(MapFilesPath(getpid(), start, start + size).c_str(), O_RDWR | O_CLOEXEC));
  int saved = errno;
  munmap(p, size);
  if (!fd.valid()) return Error::FromErrno("open map_files of shared anonymous memory", saved);
  return fd;
}

Result<sys::UniqueFd> CreateDeletedTmpfsFile(const std::string& maps_path) {
  std::string path = maps_path.substr(0, maps_path.size() - kDeleted.size());
  sys::UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (fd.valid()) {
    unlink(path.c_str());
    return fd;
  }
  // The name is taken again: an unnamed file in the same directory.
  std::string dir = path.substr(0, path.rfind('/') + 1);
  fd.reset(open(dir.c_str(), O_RDWR | O_TMPFILE | O_CLOEXEC, 0600));
  if (!fd.valid()) return Error::Errno("recreate unlinked file " + path);
  return fd;
}

Result<sys::UniqueFd> CreateMemfd(const std::string& maps_path) {
  // "/memfd:NAME (deleted)" -> NAME
  std::string name = maps_path.substr(7);
  if (name.ends_with(kDeleted)) name.resize(name.size() - kDeleted.size());
  sys::UniqueFd fd(memfd_create(name.c_str(), MFD_CLOEXEC));
  if (!fd.valid()) return Error::Errno("memfd_create " + name);
  return fd;
}

}  // namespace

bool IsShmemPath(const std::string& path) {
  if (path.starts_with("/SYSV")) return false;  // SysV shm: needs the IPC namespace
  return path == "/dev/zero (deleted)" || path.starts_with("[anon_shmem:") ||
         path.starts_with("/memfd:") || path.ends_with(kDeleted);
}

Status CollectObjects(const std::vector<TaskVmas>& tasks, uint64_t* next_id,
                      std::vector<image::File>* files, std::vector<ObjectSource>* sources) {
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> ids;  // (dev, ino) -> file id
  for (const TaskVmas& t : tasks) {
    for (image::Vma& vma : *t.proc->mutable_vmas()) {
      if (vma.kind() != image::Vma::SHMEM) continue;
      uint64_t dev = (uint64_t{vma.file_dev_major()} << 32) | vma.file_dev_minor();
      auto [it, fresh] = ids.try_emplace({dev, vma.file_ino()}, 0);
      if (fresh) {
        it->second = ++*next_id;
        image::ShmemState state;
        state.set_origin(OriginOf(vma.name()));
        state.set_size(vma.file_size());
        state.set_name(vma.name());
        image::File file;
        file.set_id(it->second);
        file.set_kind(kName);
        file.mutable_state()->PackFrom(state);
        files->push_back(std::move(file));
        sources->push_back({it->second, t.host_pid, vma.start(), vma.end(), vma.file_size()});
      }
      vma.set_shmem_file_id(it->second);
    }
  }
  return Ok();
}

Status WriteContents(const std::vector<ObjectSource>& sources, image::Writer& writer) {
  std::vector<uint8_t> buf(kChunk);
  for (const ObjectSource& s : sources) {
    std::string path = MapFilesPath(s.host_pid, s.start, s.end);
    sys::UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return Error::Errno("open " + path);
    // Only the object's allocated extents hold data; holes read as zeros.
    off_t off = 0;
    while (static_cast<uint64_t>(off) < s.size) {
      off_t data = lseek(fd.get(), off, SEEK_DATA);
      if (data < 0 && errno == ENXIO) break;
      if (data < 0) return Error::Errno("SEEK_DATA in " + path);
      off_t hole = lseek(fd.get(), data, SEEK_HOLE);
      if (hole < 0) return Error::Errno("SEEK_HOLE in " + path);
      uint64_t begin = static_cast<uint64_t>(data) & ~(kPage - 1);
      uint64_t end = std::min<uint64_t>((static_cast<uint64_t>(hole) + kPage - 1) & ~(kPage - 1),
                                        (s.size + kPage - 1) & ~(kPage - 1));
      STASIS_TRY(WriteRange(fd.get(), s.file_id, begin, end - begin, buf, writer));
      off = static_cast<off_t>(end);
    }
  }
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext&, const image::File& file) {
  image::ShmemState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("shmem state does not parse");
  sys::UniqueFd fd;
  switch (state.origin()) {
    case image::ShmemState::ANON:
      return CreateAnon(state.size());
    case image::ShmemState::MEMFD:
      fd = STASIS_TRY(CreateMemfd(state.name()));
      break;
    default:
      fd = STASIS_TRY(CreateDeletedTmpfsFile(state.name()));
      break;
  }
  if (ftruncate(fd.get(), static_cast<off_t>(state.size())) < 0) {
    return Error::Errno(fmt::format("size {} to {} bytes", state.name(), state.size()));
  }
  return fd;
}

Status FillPages(int fd, const image::PageRun& run, uint64_t object_size) {
  if (run.addr >= object_size) return Error::Corrupt("shared memory pages beyond the object");
  // Keep the object's size: its last page may hold only its first bytes.
  uint64_t len = std::min<uint64_t>(uint64_t{run.npages} * kPage, object_size - run.addr);
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, run.data + done, len - done, static_cast<off_t>(run.addr + done));
    if (n <= 0) return Error::Errno(fmt::format("fill shared memory at offset {:#x}", run.addr));
    done += static_cast<size_t>(n);
  }
  return Ok();
}

}  // namespace stasis::kinds::shmem
