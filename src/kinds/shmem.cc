#include "kinds/shmem.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
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
  if (p == MAP_FAILED)
    return Error::Errno(fmt::format("shared anonymous memory of {} bytes", size));
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

Result<sys::UniqueFd> CreateMemfd(const std::string& maps_path, bool allow_sealing) {
  // "/memfd:NAME (deleted)" -> NAME
  std::string name = maps_path.substr(7);
  if (name.ends_with(kDeleted)) name.resize(name.size() - kDeleted.size());
  sys::UniqueFd fd(
      memfd_create(name.c_str(), MFD_CLOEXEC | (allow_sealing ? MFD_ALLOW_SEALING : 0)));
  if (!fd.valid()) return Error::Errno("memfd_create " + name);
  return fd;
}

using ShmemOrigin = image::ShmemState::Origin;

}  // namespace

namespace {

ShmemOrigin OriginOf(const std::string& path) {
  if (path == "/dev/zero (deleted)" || path.starts_with("[anon_shmem:")) {
    return image::ShmemState::ANON;
  }
  if (path.starts_with("/memfd:")) return image::ShmemState::MEMFD;
  return image::ShmemState::TMPFS_DELETED;
}

// What the object says of itself beyond its contents: permission bits and
// owner, and a memfd's seals.
Status DumpAttributes(int fd, const struct stat& st, image::ShmemState* state) {
  state->set_mode(st.st_mode & 07777);
  state->set_uid(st.st_uid);
  state->set_gid(st.st_gid);
  if (state->origin() != image::ShmemState::MEMFD) return Ok();
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) return Error::Errno("F_GET_SEALS");
  if (seals & ~kKnownSeals) {
    return Error::Unsupported(fmt::format(
        "memfd seals {:#x} include ones unknown to Stasis ({:#x})", seals, seals & ~kKnownSeals));
  }
  state->set_seals(static_cast<uint32_t>(seals));
  state->set_allow_sealing(!(seals & F_SEAL_SEAL));
  return Ok();
}

}  // namespace

bool IsShmemPath(const std::string& path) {
  if (path.starts_with("/SYSV")) return false;  // SysV shm: needs the IPC namespace
  return path == "/dev/zero (deleted)" || path.starts_with("[anon_shmem:") ||
         path.starts_with("/memfd:") || path.ends_with(kDeleted);
}

bool Matches(const FdDumpInput& in) {
  if (!S_ISREG(in.st.st_mode) || in.st.st_nlink != 0) return false;
  struct statfs fs;
  return fstatfs(in.local.get(), &fs) == 0 && fs.f_type == TMPFS_MAGIC;
}

Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file) {
  image::ShmemState state;
  state.set_origin(OriginOf(in.link));
  state.set_size(static_cast<uint64_t>(in.st.st_size));
  state.set_name(in.link);
  state.set_dev(in.st.st_dev);
  state.set_ino(in.st.st_ino);
  state.set_is_fd(true);
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  state.set_pos(in.info.pos);
  STASIS_TRY_CTX(DumpAttributes(in.local.get(), in.st, &state), DescribeFd(in.pid, in.fd, in.link));
  file->mutable_state()->PackFrom(state);
  bool known = false;
  for (const ContentSource& c : ctx.content_sources) {
    known = known || (c.dev == in.st.st_dev && c.ino == in.st.st_ino);
  }
  if (!known) {
    ctx.content_sources.push_back({file->id(), in.st.st_dev, in.st.st_ino,
                                   fmt::format("/proc/{}/fd/{}", in.pid, in.fd),
                                   static_cast<uint64_t>(in.st.st_size)});
  }
  return Ok();
}

Status CollectObjects(const std::vector<TaskVmas>& tasks, uint64_t* next_id,
                      std::vector<image::File>* files, std::vector<ContentSource>* sources) {
  for (const TaskVmas& t : tasks) {
    for (image::Vma& vma : *t.proc->mutable_vmas()) {
      if (vma.kind() != image::Vma::SHMEM) continue;
      uint64_t dev = makedev(vma.file_dev_major(), vma.file_dev_minor());
      const ContentSource* found = nullptr;
      for (const ContentSource& c : *sources) {
        if (c.dev == dev && c.ino == vma.file_ino()) found = &c;
      }
      if (found == nullptr) {
        image::ShmemState state;
        state.set_origin(OriginOf(vma.name()));
        state.set_size(vma.file_size());
        state.set_name(vma.name());
        state.set_dev(dev);
        state.set_ino(vma.file_ino());
        std::string path = MapFilesPath(t.host_pid, vma.start(), vma.end());
        sys::UniqueFd object(open(path.c_str(), O_RDONLY | O_CLOEXEC));
        struct stat st;
        if (!object.valid() || fstat(object.get(), &st) < 0) return Error::Errno("open " + path);
        STASIS_TRY_CTX(DumpAttributes(object.get(), st, &state),
                       fmt::format("pid {} mapping {:#x}-{:#x} ({})", t.host_pid, vma.start(),
                                   vma.end(), vma.name()));
        image::File file;
        file.set_id(++*next_id);
        file.set_kind(kName);
        file.mutable_state()->PackFrom(state);
        files->push_back(std::move(file));
        sources->push_back({*next_id, dev, vma.file_ino(), path, vma.file_size()});
        found = &sources->back();
      }
      vma.set_shmem_file_id(found->file_id);
    }
  }
  return CheckSealedMappings(tasks, *files);
}

Status WriteContents(const std::vector<ContentSource>& sources, image::Writer& writer) {
  std::vector<uint8_t> buf(kChunk);
  for (const ContentSource& s : sources) {
    sys::UniqueFd fd(open(s.path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return Error::Errno("open " + s.path);
    // Only the object's allocated extents hold data; holes read as zeros.
    off_t off = 0;
    while (static_cast<uint64_t>(off) < s.size) {
      off_t data = lseek(fd.get(), off, SEEK_DATA);
      if (data < 0 && errno == ENXIO) break;
      if (data < 0) return Error::Errno("SEEK_DATA in " + s.path);
      off_t hole = lseek(fd.get(), data, SEEK_HOLE);
      if (hole < 0) return Error::Errno("SEEK_HOLE in " + s.path);
      uint64_t begin = static_cast<uint64_t>(data) & ~(kPage - 1);
      uint64_t end = std::min<uint64_t>((static_cast<uint64_t>(hole) + kPage - 1) & ~(kPage - 1),
                                        (s.size + kPage - 1) & ~(kPage - 1));
      STASIS_TRY(WriteRange(fd.get(), s.file_id, begin, end - begin, buf, writer));
      off = static_cast<off_t>(end);
    }
  }
  return Ok();
}

namespace {

Result<sys::UniqueFd> CreateObject(const image::ShmemState& state) {
  sys::UniqueFd fd;
  switch (state.origin()) {
    case image::ShmemState::ANON:
      return CreateAnon(state.size());
    case image::ShmemState::MEMFD:
      // Without MFD_ALLOW_SEALING a memfd is born with F_SEAL_SEAL; other
      // seals are added once the contents are in (AddSeals).
      fd = STASIS_TRY(CreateMemfd(state.name(), state.allow_sealing() || state.seals() != 0));
      break;
    default:
      fd = STASIS_TRY(CreateDeletedTmpfsFile(state.name()));
      break;
  }
  if (ftruncate(fd.get(), static_cast<off_t>(state.size())) < 0) {
    return Error::Errno(fmt::format("size {} to {} bytes", state.name(), state.size()));
  }
  // Images from before mode and owner were carried have all three 0.
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return Error::Errno("fstat " + state.name());
  if (state.mode() != 0 || state.uid() != 0 || state.gid() != 0) {
    bool same_owner = st.st_uid == state.uid() && st.st_gid == state.gid();
    if (!same_owner && fchown(fd.get(), state.uid(), state.gid()) < 0) {
      return Error::Errno(fmt::format("chown {} to {}:{}", state.name(), state.uid(), state.gid()));
    }
    if (fchmod(fd.get(), state.mode()) < 0) {
      return Error::Errno(fmt::format("chmod {} to {:o}", state.name(), state.mode()));
    }
  }
  return fd;
}

Result<sys::UniqueFd> Reopen(int fd, int flags) {
  std::string self = fmt::format("/proc/self/fd/{}", fd);
  sys::UniqueFd out(open(self.c_str(), flags | O_CLOEXEC));
  if (!out.valid()) return Error::Errno("reopen shared memory object");
  return out;
}

}  // namespace

// Objects created so far, by (dev, ino) at dump time: the File id of their
// first File, whose description later ones reopen.
struct RestoreState {
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> objects;
};

Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file) {
  image::ShmemState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("shmem state does not parse");
  int accmode = state.is_fd() ? static_cast<int>(state.flags() & O_ACCMODE) : O_RDWR;
  sys::UniqueFd fd;
  std::map<std::pair<uint64_t, uint64_t>, uint64_t>& objects = ctx.State<RestoreState>().objects;
  auto known = objects.find({state.dev(), state.ino()});
  if (known != objects.end()) {
    fd = STASIS_TRY(Reopen(ctx.local_fds.at(known->second), accmode));
  } else {
    fd = STASIS_TRY(CreateObject(state));
    objects[{state.dev(), state.ino()}] = file.id();
    if (accmode != O_RDWR) {
      // Keep the object alive in ctx through a read-write description, so
      // its contents can still be written; hand out the original mode.
      sys::UniqueFd same_mode = STASIS_TRY(Reopen(fd.get(), accmode));
      ctx.keep_alive.push_back(std::move(fd));
      fd = std::move(same_mode);
    }
  }
  if (state.is_fd()) {
    constexpr uint32_t kSettable = O_APPEND | O_ASYNC | O_DIRECT | O_NOATIME | O_NONBLOCK;
    if (fcntl(fd.get(), F_SETFL, state.flags() & kSettable) < 0) return Error::Errno("F_SETFL");
    if (lseek(fd.get(), static_cast<off_t>(state.pos()), SEEK_SET) < 0)
      return Error::Errno("lseek");
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

const FdKind kKind = {
    .name = kName,
    .summary =
        "Shared memory objects: MAP_SHARED|MAP_ANONYMOUS, unlinked /dev/shm files and memfds "
        "(name, mode, owner, seals), contents carried once",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
};

}  // namespace stasis::kinds::shmem
