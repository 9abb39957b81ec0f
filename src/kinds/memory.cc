#include "kinds/memory.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>

#include <algorithm>

#include "kinds/shmem.h"

namespace stasis::kinds::memory {
namespace {

using image::Vma;

// smaps VmFlags that make a VMA impossible to carry today, and why.
struct Refusal {
  const char* flag;
  const char* why;
};
constexpr Refusal kRefusedFlags[] = {
    {"ht", "hugetlbfs memory"},
    {"um", "userfaultfd-registered memory"},
    {"uw", "userfaultfd-registered memory"},
    {"ss", "a shadow stack"},
    {"sl", "a sealed mapping (mseal)"},
};

bool HasFlag(const Vma& vma, std::string_view flag) {
  return std::find(vma.vm_flags().begin(), vma.vm_flags().end(), flag) != vma.vm_flags().end();
}

uint32_t Prot(const sys::proc::MapsEntry& m) {
  return (m.read ? PROT_READ : 0) | (m.write ? PROT_WRITE : 0) | (m.exec ? PROT_EXEC : 0);
}

Result<Vma::Kind> KindOf(pid_t pid, const sys::proc::SmapsEntry& entry) {
  const sys::proc::MapsEntry& m = entry.map;
  std::string what = fmt::format("pid {} mapping {:#x}-{:#x} ({})", pid, m.start, m.end,
                                 m.path.empty() ? "anonymous" : m.path);
  if (m.path == "[vdso]") return Vma::VDSO;
  if (m.path == "[vvar]") return Vma::VVAR;
  if (m.path == "[vvar_vclock]") return Vma::VVAR_VCLOCK;
  if (m.path == "[vsyscall]") return Vma::VSYSCALL;
  for (const Refusal& r : kRefusedFlags) {
    if (sys::proc::HasVmFlag(entry, r.flag)) return Error::Unsupported(what + ": " + r.why);
  }
  if (sys::proc::HasVmFlag(entry, "pf") || sys::proc::HasVmFlag(entry, "io")) {
    return Error::Unsupported(what + ": device memory (VM_PFNMAP/VM_IO)");
  }
  if (m.shared && shmem::IsShmemPath(m.path)) return Vma::SHMEM;
  bool anon_name = m.path.starts_with("[anon:");
  if (m.inode == 0 && (m.path.empty() || m.path == "[heap]" || m.path == "[stack]" || anon_name)) {
    if (m.shared)
      return Error::Unsupported(what + ": this shared anonymous memory is not supported");
    return Vma::ANON;
  }
  if (m.path.starts_with("/SYSV"))
    return Error::Unsupported(what + ": SysV shared memory is not supported yet");
  if (m.path.ends_with(" (deleted)") || m.path.starts_with("/memfd:")) {
    return Error::Unsupported(what +
                              ": private mapping of a deleted file or memfd is not supported yet");
  }
  if (m.path.starts_with("/") && m.inode != 0) return Vma::FILE;
  return Error::Unsupported(what + ": this kind of mapping is not supported");
}

Result<uint64_t> FileSize(pid_t pid, const sys::proc::MapsEntry& m) {
  // map_files/ reaches the mapped file itself even if the path was replaced.
  std::string path = fmt::format("/proc/{}/map_files/{:x}-{:x}", pid, m.start, m.end);
  struct stat st;
  if (stat(path.c_str(), &st) < 0) return Error::Errno("stat " + path);
  if (st.st_ino != m.inode) {
    return Error::Unsupported(
        fmt::format("pid {}: {} was replaced on disk while mapped", pid, m.path));
  }
  return static_cast<uint64_t>(st.st_size);
}

// The object behind a shared mapping, through map_files: it must live on
// tmpfs/shmem, where Stasis can carry its contents.
Status IdentifyShmem(pid_t pid, Vma* vma) {
  std::string path = fmt::format("/proc/{}/map_files/{:x}-{:x}", pid, vma->start(), vma->end());
  struct stat st;
  if (stat(path.c_str(), &st) < 0) return Error::Errno("stat " + path);
  struct statfs fs;
  if (statfs(path.c_str(), &fs) < 0) return Error::Errno("statfs " + path);
  if (fs.f_type != TMPFS_MAGIC) {
    return Error::Unsupported(fmt::format(
        "pid {} mapping {:#x}-{:#x} ({}): shared mapping of a deleted file outside tmpfs", pid,
        vma->start(), vma->end(), vma->name()));
  }
  vma->set_file_dev_major(major(st.st_dev));
  vma->set_file_dev_minor(minor(st.st_dev));
  vma->set_file_ino(st.st_ino);
  vma->set_file_size(static_cast<uint64_t>(st.st_size));
  return Ok();
}

// Kernel-side flags the restore must pass to mmap.
int ExtraMapFlags(const Vma& vma) {
  int flags = 0;
  if (HasFlag(vma, "gd")) flags |= MAP_GROWSDOWN;
  if (HasFlag(vma, "nr")) flags |= MAP_NORESERVE;
  return flags;
}

uint32_t RestoreProt(const Vma& vma) {
  return vma.has_pages() ? vma.prot() | PROT_READ | PROT_WRITE : vma.prot();
}

// Files stay open in the task while VMAs are mapped, one per file and mode.
class RemoteFiles {
 public:
  explicit RemoteFiles(RemoteTask& task) : task_(task) {}
  ~RemoteFiles() {
    for (auto& [key, fd] : fds_) (void)task_.Call("close", SYS_close, fd);
  }
  Result<int> Get(const Vma& vma) {
    bool rw = vma.shared() && (vma.prot() & PROT_WRITE);
    std::string key = (rw ? "w:" : "r:") + vma.name();
    auto it = fds_.find(key);
    if (it != fds_.end()) return it->second;
    sys::UniqueFd fd(open(vma.name().c_str(), (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC));
    if (!fd.valid()) return Error::Errno("open mapped file " + vma.name());
    struct stat st;
    if (fstat(fd.get(), &st) < 0) return Error::Errno("fstat " + vma.name());
    if (static_cast<uint64_t>(st.st_size) != vma.file_size()) {
      return Error::Invalid(
          fmt::format("mapped file {} changed size since the dump (was {}, now {})", vma.name(),
                      vma.file_size(), st.st_size));
    }
    int remote = STASIS_TRY(task_.PullFd(fd.get()));
    fds_[key] = remote;
    return remote;
  }
  Result<int> GetShmem(const Vma& vma, int local_fd) {
    std::string key = fmt::format("shmem:{}", vma.shmem_file_id());
    auto it = fds_.find(key);
    if (it != fds_.end()) return it->second;
    int remote = STASIS_TRY(task_.PullFd(local_fd));
    fds_[key] = remote;
    return remote;
  }

 private:
  RemoteTask& task_;
  std::map<std::string, int> fds_;
};

Status Madvise(RemoteTask& task, const Vma& vma, int advice) {
  STASIS_TRY_CTX(task.Call("madvise", SYS_madvise, vma.start(), vma.end() - vma.start(), advice),
                 fmt::format("mapping {:#x}-{:#x} advice {}", vma.start(), vma.end(), advice));
  return Ok();
}

Status SetAnonName(RemoteTask& task, const Vma& vma) {
  // "[anon:NAME]" -> NAME; PR_SET_VMA_ANON_NAME (5.17+).
  std::string name = vma.name().substr(6, vma.name().size() - 7);
  uint64_t addr = STASIS_TRY(task.Put(name.c_str(), name.size() + 1));
  constexpr int kPrSetVma = 0x53564d41, kPrSetVmaAnonName = 0;
  STASIS_TRY(task.Call("prctl(PR_SET_VMA)", SYS_prctl, kPrSetVma, kPrSetVmaAnonName, vma.start(),
                       vma.end() - vma.start(), addr));
  return Ok();
}

// A VMA the task got from its restored parent at fork, with the pages it
// still shared: drop the pages it had dropped, and let its own be written.
Status PrepareInherited(RemoteTask& task, const Vma& vma) {
  for (int i = 0; i + 1 < vma.zap_size(); i += 2) {
    STASIS_TRY(task.Call("madvise(DONTNEED)", SYS_madvise, vma.zap(i), vma.zap(i + 1) - vma.zap(i),
                         MADV_DONTNEED));
  }
  if (vma.has_pages()) {
    STASIS_TRY(task.Call("mprotect", SYS_mprotect, vma.start(), vma.end() - vma.start(),
                         RestoreProt(vma)));
  }
  return Ok();
}

}  // namespace

bool IsVdsoBlock(const Vma& vma) {
  return vma.kind() == Vma::VDSO || vma.kind() == Vma::VVAR || vma.kind() == Vma::VVAR_VCLOCK;
}

Result<Vma> ClassifyVma(pid_t pid, const sys::proc::SmapsEntry& entry) {
  const sys::proc::MapsEntry& m = entry.map;
  Vma vma;
  vma.set_kind(STASIS_TRY(KindOf(pid, entry)));
  vma.set_start(m.start);
  vma.set_end(m.end);
  vma.set_prot(Prot(m));
  vma.set_shared(m.shared);
  vma.set_name(m.path);
  vma.set_pgoff(m.pgoff);
  for (const std::string& flag : entry.vm_flags) vma.add_vm_flags(flag);
  if (vma.kind() == Vma::FILE) {
    vma.set_file_dev_major(m.dev_major);
    vma.set_file_dev_minor(m.dev_minor);
    vma.set_file_ino(m.inode);
  }
  return vma;
}

Status DumpVmas(pid_t pid, image::Process* proc) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/smaps", pid)));
  std::vector<sys::proc::SmapsEntry> entries = STASIS_TRY(sys::proc::ParseSmaps(text));
  for (const sys::proc::SmapsEntry& entry : entries) {
    Vma vma = STASIS_TRY(ClassifyVma(pid, entry));
    if (vma.kind() == Vma::FILE) vma.set_file_size(STASIS_TRY(FileSize(pid, entry.map)));
    if (vma.kind() == Vma::SHMEM) STASIS_TRY(IdentifyShmem(pid, &vma));
    *proc->add_vmas() = std::move(vma);
  }
  return Ok();
}

Status MapVmas(RemoteTask& task, const image::Process& proc, const LocalFdLookup& local_fd) {
  RemoteFiles files(task);
  for (const Vma& vma : proc.vmas()) {
    if (IsVdsoBlock(vma) || vma.kind() == Vma::VSYSCALL) continue;
    if (vma.inherited()) {
      STASIS_TRY(PrepareInherited(task, vma));
      continue;
    }
    uint64_t len = vma.end() - vma.start();
    int flags = MAP_FIXED | (vma.shared() ? MAP_SHARED : MAP_PRIVATE) | ExtraMapFlags(vma);
    int fd = -1;
    if (vma.kind() == Vma::FILE) {
      fd = STASIS_TRY(files.Get(vma));
    } else if (vma.kind() == Vma::SHMEM) {
      fd = STASIS_TRY(files.GetShmem(vma, STASIS_TRY(local_fd(vma.shmem_file_id()))));
    } else {
      flags |= MAP_ANONYMOUS;
    }
    STASIS_TRY_CTX(task.Call("mmap", SYS_mmap, vma.start(), len, RestoreProt(vma), flags, fd,
                             vma.kind() == Vma::ANON ? 0 : vma.pgoff()),
                   fmt::format("mapping {:#x}-{:#x} ({})", vma.start(), vma.end(), vma.name()));
    // Before the pages arrive, so they land in huge pages.
    if (HasFlag(vma, "hg")) STASIS_TRY(Madvise(task, vma, MADV_HUGEPAGE));
    if (HasFlag(vma, "nh")) STASIS_TRY(Madvise(task, vma, MADV_NOHUGEPAGE));
  }
  return Ok();
}

Status FinishVmas(RemoteTask& task, const image::Process& proc) {
  for (const Vma& vma : proc.vmas()) {
    if (IsVdsoBlock(vma) || vma.kind() == Vma::VSYSCALL) continue;
    uint64_t len = vma.end() - vma.start();
    // An inherited VMA has its parent's protection until now.
    if (RestoreProt(vma) != vma.prot() || vma.inherited()) {
      STASIS_TRY(task.Call("mprotect", SYS_mprotect, vma.start(), len, vma.prot()));
    }
    if (HasFlag(vma, "dc")) STASIS_TRY(Madvise(task, vma, MADV_DONTFORK));
    if (HasFlag(vma, "dd")) STASIS_TRY(Madvise(task, vma, MADV_DONTDUMP));
    if (HasFlag(vma, "wf")) STASIS_TRY(Madvise(task, vma, MADV_WIPEONFORK));
    if (HasFlag(vma, "mg")) STASIS_TRY(Madvise(task, vma, MADV_MERGEABLE));
    if (HasFlag(vma, "lo")) {
      int mlock_flags = HasFlag(vma, "lf") ? MLOCK_ONFAULT : 0;
      STASIS_TRY(task.Call("mlock2", SYS_mlock2, vma.start(), len, mlock_flags));
    }
    if (vma.name().starts_with("[anon:")) STASIS_TRY(SetAnonName(task, vma));
  }
  return Ok();
}

}  // namespace stasis::kinds::memory
