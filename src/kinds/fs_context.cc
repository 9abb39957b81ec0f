#include "kinds/fs_context.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/syscall.h>

namespace stasis::kinds::fs_context {
namespace {

Result<std::string> DirLink(pid_t pid, const char* which) {
  std::string path = STASIS_TRY(sys::proc::ReadLink(fmt::format("/proc/{}/{}", pid, which)));
  if (path.ends_with(" (deleted)")) {
    return Error::Unsupported(fmt::format("pid {}: {} {} was deleted", pid, which, path));
  }
  return path;
}

Result<sys::UniqueFd> OpenDir(const std::string& path) {
  sys::UniqueFd fd(open(path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return Error::Errno("open directory " + path);
  return fd;
}

}  // namespace

Status Dump(pid_t pid, const sys::proc::ProcStatus& status, image::Process* proc) {
  proc->set_cwd(STASIS_TRY(DirLink(pid, "cwd")));
  proc->set_root(STASIS_TRY(DirLink(pid, "root")));
  proc->set_umask(status.umask);
  return Ok();
}

Status Restore(RemoteTask& task, const image::Process& proc) {
  if (proc.root() != "/") {
    sys::UniqueFd root = STASIS_TRY(OpenDir(proc.root()));
    STASIS_TRY(task.WithPulledFd(root.get(), [&](int fd) -> Status {
      STASIS_TRY(task.Call("fchdir(root)", SYS_fchdir, fd));
      uint64_t dot = STASIS_TRY(task.Put(".", 2));
      STASIS_TRY_CTX(task.Call("chroot", SYS_chroot, dot), "root " + proc.root());
      return Ok();
    }));
  }
  // After a chroot the cwd path is relative to the new root, as readlink
  // showed it; open it from the host side through the root.
  std::string cwd = proc.root() == "/" ? proc.cwd() : proc.root() + proc.cwd();
  sys::UniqueFd dir = STASIS_TRY(OpenDir(cwd));
  STASIS_TRY(task.WithPulledFd(dir.get(), [&](int fd) -> Status {
    STASIS_TRY_CTX(task.Call("fchdir(cwd)", SYS_fchdir, fd), "cwd " + cwd);
    return Ok();
  }));
  STASIS_TRY(task.Call("umask", SYS_umask, proc.umask()));
  return Ok();
}

namespace {

Status DumpRow(const ProcessDumpInput& in, image::Process* proc) {
  return Dump(in.pid, *in.status, proc);
}

}  // namespace

const ProcessKind kKind = {
    .name = "fs_context",
    .summary = "cwd, root and umask",
    .dump_phase = DumpPhase::kAfterVmas,
    .dump = DumpRow,
    .restore_phase = RestorePhase::kAttributes,
    .restore = Restore,
};

}  // namespace stasis::kinds::fs_context
