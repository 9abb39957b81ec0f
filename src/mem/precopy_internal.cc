#include "mem/precopy_internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/userfaultfd.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <sstream>

#include "sys/pagemap.h"
#include "sys/pidfds.h"
#include "sys/tracee.h"

namespace stasis::mem::precopy_internal {

constexpr uint64_t kPage = kPageBytes;
constexpr uint64_t kPmPresent = sys::pagemap::kPresent;
constexpr uint64_t kPmExclusive = sys::pagemap::kExclusive;
constexpr size_t kIovBatch = 1024;  // IOV_MAX

namespace {

Result<uint64_t> VdsoSyscall(pid_t pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/maps", pid)));
  for (const sys::proc::MapsEntry& m : STASIS_TRY(sys::proc::ParseMaps(text))) {
    if (m.path == "[vdso]") return sys::FindSyscallInsn(pid, m.start, m.end);
  }
  return Error::Unsupported(fmt::format("pid {}: no [vdso] to run system calls from", pid));
}

// One process_vm_readv per kIovBatch pieces; false if any came back short.
bool ReadPieces(pid_t pid, const std::vector<iovec>& local, const std::vector<iovec>& remote) {
  for (size_t i = 0; i < local.size(); i += kIovBatch) {
    size_t n = std::min(kIovBatch, local.size() - i);
    size_t bytes = 0;
    for (size_t j = i; j < i + n; ++j) bytes += local[j].iov_len;
    ssize_t got = process_vm_readv(pid, &local[i], n, &remote[i], n, 0);
    if (got != static_cast<ssize_t>(bytes)) return false;
  }
  return true;
}

}  // namespace

std::vector<pid_t> TreePids(pid_t root) {
  std::vector<pid_t> out = {root};
  for (size_t i = 0; i < out.size(); ++i) {
    std::string dir = fmt::format("/proc/{}/task", out[i]);
    DIR* d = opendir(dir.c_str());
    if (d == nullptr) continue;
    while (struct dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      Result<std::string> text = sys::proc::ReadFile(dir + "/" + e->d_name + "/children");
      if (!text.ok()) continue;
      std::istringstream in(text.value());
      for (pid_t child; in >> child;) out.push_back(child);
    }
    closedir(d);
  }
  return out;
}

Result<sys::UniqueFd> StealUserfaultfd(pid_t pid) {
  std::vector<sys::Tracee> threads = STASIS_TRY(sys::SeizeThreads(pid));
  sys::Injector inj = STASIS_TRY(sys::Injector::Create(threads[0], STASIS_TRY(VdsoSyscall(pid))));
  // UFFD_USER_MODE_ONLY: allowed for any task (vm.unprivileged_userfaultfd
  // limits the other mode to CAP_SYS_PTRACE), and enough, since WP_ASYNC
  // resolves every write fault, the kernel's own included, without the uffd.
  long fd = STASIS_TRY(
      inj.Call("userfaultfd", SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  Result<sys::UniqueFd> pidfd = sys::PidfdOpen(pid);
  Result<sys::UniqueFd> stolen =
      pidfd.ok() ? sys::PidfdGetfd(pidfd.value().get(), pid, static_cast<int>(fd))
                 : Result<sys::UniqueFd>(pidfd.error());
  STASIS_TRY(inj.Call("close(userfaultfd)", SYS_close, static_cast<uint64_t>(fd)));
  STASIS_TRY(inj.Finish());
  return stolen;
}

bool Trackable(const sys::proc::MapsEntry& m) {
  return m.read && m.write && !m.shared && m.inode == 0 && (m.path.empty() || m.path == "[heap]");
}

Status ReadPagemap(int fd, uint64_t addr, uint64_t npages, uint64_t* out) {
  return sys::pagemap::Read(fd, addr / kPage, npages, out);
}

// process_vm_readv pins the pages it reads, and pinning a page the task
// shares copy-on-write with another process makes the kernel give the task
// a copy of its own (gup_must_unshare): a forked tree would lose its
// sharing, in memory and in the image. So pages pagemap does not show
// exclusive to the task are read through /proc/PID/mem, which does not pin.
Status ReadTaskPages(pid_t pid, int pagemap, int mem, const std::vector<Piece>& pieces) {
  std::vector<iovec> local, remote;
  std::vector<uint64_t> entries;
  for (const Piece& piece : pieces) {
    entries.resize(piece.npages);
    STASIS_TRY(ReadPagemap(pagemap, piece.addr, piece.npages, entries.data()));
    auto exclusive = [&entries](uint64_t i) {
      return (entries[i] & (kPmPresent | kPmExclusive)) == (kPmPresent | kPmExclusive);
    };
    for (uint64_t i = 0; i < piece.npages;) {
      uint64_t j = i + 1;
      while (j < piece.npages && exclusive(j) == exclusive(i)) ++j;
      uint64_t addr = piece.addr + i * kPage, len = (j - i) * kPage;
      uint8_t* dst = piece.dst + i * kPage;
      if (exclusive(i)) {
        local.push_back({dst, len});
        remote.push_back({reinterpret_cast<void*>(addr), len});
      } else if (pread(mem, dst, len, static_cast<off_t>(addr)) != static_cast<ssize_t>(len)) {
        return Error::Errno(fmt::format("pid {}: read /proc/PID/mem at {:#x}", pid, addr));
      }
      i = j;
    }
  }
  if (!ReadPieces(pid, local, remote)) {
    return Error::Errno(fmt::format("pid {}: process_vm_readv of {} page runs", pid, local.size()));
  }
  return Ok();
}

}  // namespace stasis::mem::precopy_internal
