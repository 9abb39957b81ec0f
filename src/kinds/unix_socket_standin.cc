// Stand-in sockets bound to a name another socket may hold (unix_socket_
// internal.h). A socket's name is the sun_path bytes it was bound with;
// the file bind() creates only makes it reachable. So a child process in a
// throwaway mount namespace, with a tmpfs over /tmp as its root, creates
// the path's directories there and binds the restorer's socket (inherited:
// the same socket) to the path. The host's file at that path, maybe a live
// server's socket, is never touched, and the tmpfs goes away once the
// stand-in is closed. connect() reaches it through the O_PATH fd that
// SIOCUNIXFILE gives, whatever mount it lives on.
#include <fcntl.h>
#include <fmt/format.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "kinds/unix_socket_internal.h"

namespace stasis::kinds::unix_socket {
namespace {

constexpr unsigned long kSiocUnixFile = 0x89E0;  // see unix_socket_names.cc

// Exit codes of the child: the step that failed, its errno in the parent's
// message comes from the step number (the child cannot report errno).
enum Step { kOk = 0, kUnshare, kPrivate, kMount, kMkdir, kChroot, kBind };

const char* StepName(int step) {
  switch (step) {
    case kUnshare:
      return "unshare(CLONE_NEWNS)";
    case kPrivate:
      return "make mounts private";
    case kMount:
      return "mount a tmpfs";
    case kMkdir:
      return "mkdir in the tmpfs";
    case kChroot:
      return "chroot into the tmpfs";
    case kBind:
      return "bind";
    default:
      return "unknown step";
  }
}

// Runs in the forked child: system calls only (the parent may have threads).
[[noreturn]] void BindInPrivateRoot(int fd, const std::vector<std::string>& dirs,
                                    const sockaddr_un& sa, socklen_t len) {
  if (unshare(CLONE_NEWNS) < 0) _exit(kUnshare);
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0) _exit(kPrivate);
  if (mount("stasis-stand-in", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755") < 0) {
    _exit(kMount);
  }
  for (const std::string& d : dirs) {
    if (mkdir(d.c_str(), 0755) < 0 && errno != EEXIST) _exit(kMkdir);
  }
  if (chroot("/tmp") < 0 || chdir("/") < 0) _exit(kChroot);
  if (bind(fd, reinterpret_cast<const sockaddr*>(&sa), len) < 0) _exit(kBind);
  _exit(kOk);
}

Status BindAside(int fd, const std::string& path) {
  sockaddr_un sa;
  socklen_t len;
  if (!ToSockaddr(path, &sa, &len)) return Error::Invalid("socket name too long");
  // "/run/a/b.sock" -> "/tmp/run", "/tmp/run/a": made inside the tmpfs
  // before the chroot.
  std::vector<std::string> dirs;
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    dirs.push_back("/tmp" + path.substr(0, slash));
  }
  pid_t child = fork();
  if (child < 0) return Error::Errno("fork to bind a stand-in");
  if (child == 0) BindInPrivateRoot(fd, dirs, sa, len);
  int status = 0;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) return Error::Errno("wait for the stand-in binder");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != kOk) {
    return Error(
        ErrorCode::kFailed,
        fmt::format("bind a stand-in to {} in a private mount namespace: {} failed", ShowName(path),
                    WIFEXITED(status) ? StepName(WEXITSTATUS(status)) : "the child was killed"));
  }
  return Ok();
}

}  // namespace

bool AbstractNameTaken(const std::string& name, int type) {
  if (!IsAbstract(name)) return false;
  sys::UniqueFd probe(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  sockaddr_un sa;
  socklen_t len;
  if (!probe.valid() || !ToSockaddr(name, &sa, &len)) return false;
  return bind(probe.get(), reinterpret_cast<sockaddr*>(&sa), len) < 0 && errno == EADDRINUSE;
}

Result<Target> BindStandIn(int fd, const std::string& name) {
  struct stat st;
  if (IsAbstract(name) || lstat(name.c_str(), &st) < 0) {
    // Nothing holds the path (or it is abstract): the ordinary way.
    image::UnixAddress addr;
    addr.set_name(name);
    return BindName(fd, addr, /*keep=*/false);
  }
  if (!BindAside(fd, name).ok()) {
    // No mount namespace to be had (no CAP_SYS_ADMIN, a seccomp policy):
    // the path is moved aside for a moment, as for other stand-ins.
    image::UnixAddress addr;
    addr.set_name(name);
    return BindName(fd, addr, /*keep=*/false);
  }
  Target target;
  target.file.reset(ioctl(fd, kSiocUnixFile));
  if (!target.file.valid()) return Error::Errno(fmt::format("SIOCUNIXFILE of {}", name));
  return target;
}

}  // namespace stasis::kinds::unix_socket
