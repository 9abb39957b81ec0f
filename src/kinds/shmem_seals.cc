// Memfd seals at restore (shmem.h). The kernel's rules that fix the order:
// - F_SEAL_WRITE cannot be added while a shared mapping may write the
//   object (6.7+: VM_SHARED with VM_MAYWRITE, even if read-only now;
//   before 6.7 any shared mapping) — EBUSY. Once it is on, a new shared
//   read-only mapping loses VM_MAYWRITE. So it goes on before the tree maps
//   the object, and the tree's mappings come out as they were.
// - F_SEAL_FUTURE_WRITE leaves the mappings made before it writable, and
//   refuses writable ones made after it. A tree that maps the object with
//   VM_MAYWRITE got that mapping before the seal: the seal goes on after it.
// - F_SEAL_SEAL must be last: it is added in the same F_ADD_SEALS call.
// - Growing, shrinking and writing the contents happen before either time.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>

#include <algorithm>
#include <map>
#include <set>

#include "fd_kinds.pb.h"
#include "kinds/shmem.h"

namespace stasis::kinds::shmem {

SealTime WhenToSeal(uint32_t seals, bool mapped_may_write) {
  if ((seals & kSealFutureWrite) && !(seals & F_SEAL_WRITE) && mapped_may_write) {
    return SealTime::kAfterMapping;
  }
  return SealTime::kBeforeMapping;
}

namespace {

using ObjectKey = std::pair<uint64_t, uint64_t>;  // (dev, ino) at dump

bool MayWrite(const image::Vma& vma) {
  return std::find(vma.vm_flags().begin(), vma.vm_flags().end(), "mw") != vma.vm_flags().end();
}

// Objects some task maps shared with VM_MAYWRITE.
std::set<ObjectKey> MappedMayWrite(const std::map<uint64_t, ObjectKey>& object_of_file,
                                   const std::vector<image::Process>& procs) {
  std::set<ObjectKey> out;
  for (const image::Process& proc : procs) {
    for (const image::Vma& vma : proc.vmas()) {
      if (vma.kind() != image::Vma::SHMEM || !MayWrite(vma)) continue;
      auto it = object_of_file.find(vma.shmem_file_id());
      if (it != object_of_file.end()) out.insert(it->second);
    }
  }
  return out;
}

Status Seal(int fd, uint32_t seals, const std::string& name) {
  // F_ADD_SEALS needs a writable description; the File's may be read-only.
  sys::UniqueFd rw(open(fmt::format("/proc/self/fd/{}", fd).c_str(), O_RDWR | O_CLOEXEC));
  if (!rw.valid()) return Error::Errno("reopen " + name + " to seal it");
  // A memfd made without MFD_ALLOW_SEALING already has all it may have.
  int now = fcntl(rw.get(), F_GET_SEALS);
  if (now < 0) return Error::Errno("F_GET_SEALS of " + name);
  uint32_t add = seals & ~static_cast<uint32_t>(now);
  if (add == 0) return Ok();
  if (fcntl(rw.get(), F_ADD_SEALS, add) < 0) {
    return Error::Errno(fmt::format("F_ADD_SEALS {:#x} to {}", add, name));
  }
  return Ok();
}

}  // namespace

Status AddSeals(const std::vector<image::File>& files, const std::vector<image::Process>& procs,
                const FdOfFile& fd_of, SealTime when) {
  std::map<uint64_t, ObjectKey> object_of_file;
  std::map<ObjectKey, std::pair<uint64_t, image::ShmemState>> objects;  // first File of each
  for (const image::File& file : files) {
    if (file.kind() != kName) continue;
    image::ShmemState state;
    if (!file.state().UnpackTo(&state)) return Error::Corrupt("shmem state does not parse");
    ObjectKey key{state.dev(), state.ino()};
    object_of_file[file.id()] = key;
    objects.try_emplace(key, file.id(), state);
  }
  std::set<ObjectKey> may_write = MappedMayWrite(object_of_file, procs);
  for (const auto& [key, first] : objects) {
    const auto& [file_id, state] = first;
    if (state.origin() != image::ShmemState::MEMFD || state.seals() == 0) continue;
    if (WhenToSeal(state.seals(), may_write.count(key) != 0) != when) continue;
    int fd = STASIS_TRY(fd_of(file_id));
    STASIS_TRY(Seal(fd, state.seals(), state.name()));
  }
  return Ok();
}

Status CheckSealedMappings(const std::vector<TaskVmas>& tasks,
                           const std::vector<image::File>& files) {
  std::map<uint64_t, uint32_t> seals_of_file;
  for (const image::File& file : files) {
    image::ShmemState state;
    if (file.kind() == kName && file.state().UnpackTo(&state))
      seals_of_file[file.id()] = state.seals();
  }
  // Per object, the first VMA with and without VM_MAYWRITE.
  std::map<uint64_t, std::pair<const image::Vma*, const image::Vma*>> seen;
  std::map<uint64_t, pid_t> pid_of;
  for (const TaskVmas& t : tasks) {
    for (const image::Vma& vma : t.proc->vmas()) {
      if (vma.kind() != image::Vma::SHMEM) continue;
      uint32_t seals = seals_of_file[vma.shmem_file_id()];
      if (!(seals & kSealFutureWrite) || (seals & F_SEAL_WRITE)) continue;
      auto& [with, without] = seen[vma.shmem_file_id()];
      (MayWrite(vma) ? with : without) = &vma;
      if (with != nullptr && without != nullptr) {
        // Sealed after the first mapping and before the second: the restore
        // can make one or the other, not both.
        return Error::Unsupported(fmt::format(
            "pid {} mapping {:#x}-{:#x} ({}): a memfd sealed F_SEAL_FUTURE_WRITE between two of "
            "its shared mappings (some may write, some may not) is not supported",
            t.host_pid, vma.start(), vma.end(), vma.name()));
      }
    }
  }
  return Ok();
}

}  // namespace stasis::kinds::shmem
