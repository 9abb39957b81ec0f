// Socket addresses, and binding names at restore time.
//
// A path name is a socket file: bind() creates it (EADDRINUSE if anything is
// at the path) and the kernel keeps it as the socket's inode, which connect()
// finds whatever path leads there. The original's socket files outlive it, so
// a restore usually finds a stale one at the path; it removes it only when no
// live socket is bound to it (sock_diag UNIX_DIAG_VFS). Names whose file was
// deleted, and stand-ins that need a name only for a moment, bind and unlink
// at once, with whatever held the path moved aside for that moment.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <cstddef>
#include <cstring>

#include "kinds/unix_socket_internal.h"

namespace stasis::kinds::unix_socket {
namespace {

// ioctl on a unix socket: an O_PATH fd of its socket file (Linux 4.11+,
// CAP_NET_ADMIN); not in Debian 12's glibc headers.
constexpr unsigned long kSiocUnixFile = 0x89E0;  // SIOCPROTOPRIVATE + 0

constexpr size_t kPathOffset = offsetof(sockaddr_un, sun_path);

// Moves whatever is at a path out of the way for a moment: renamed beside
// it, put back by Restore() or, on an error path, by the destructor.
class PathAside {
 public:
  PathAside() = default;
  PathAside(const PathAside&) = delete;
  PathAside& operator=(const PathAside&) = delete;
  ~PathAside() { (void)Restore(); }

  Status Move(const std::string& path) {
    std::string aside = fmt::format("{}.stasis-aside-{}", path, getpid());
    if (rename(path.c_str(), aside.c_str()) < 0) {
      return Error::Errno(fmt::format("move {} aside to {}", path, aside));
    }
    path_ = path;
    aside_ = aside;
    return Ok();
  }
  Status Restore() {
    if (aside_.empty()) return Ok();
    std::string aside = std::move(aside_);
    aside_.clear();
    if (rename(aside.c_str(), path_.c_str()) < 0) {
      return Error::Errno(fmt::format("put {} back from {}", path_, aside));
    }
    return Ok();
  }

 private:
  std::string path_, aside_;
};

// Makes room for a socket file that stays: only a stale socket file may be
// there, and it goes.
Status ClearStale(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) < 0) {
    if (errno == ENOENT) return Ok();
    return Error::Errno(fmt::format("lstat {}", path));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return Error::FromErrno(fmt::format("bind {}: the path exists and is not a socket", path),
                            EADDRINUSE);
  }
  DiagTable table = STASIS_TRY(DumpDiagTable());
  if (FileInUse(table, st.st_dev, st.st_ino)) {
    return Error::FromErrno(
        fmt::format("bind {}: a live socket is bound to it (is the original still running?)", path),
        EADDRINUSE);
  }
  if (unlink(path.c_str()) < 0) return Error::Errno(fmt::format("unlink stale socket {}", path));
  return Ok();
}

Status SetOwnerAndMode(const std::string& path, const image::UnixAddress& addr) {
  if (chmod(path.c_str(), addr.mode() & 07777) < 0) {
    return Error::Errno(fmt::format("chmod {} {:o}", path, addr.mode() & 07777));
  }
  if (lchown(path.c_str(), addr.uid(), addr.gid()) < 0) {
    return Error::Errno(fmt::format("chown {} {}:{}", path, addr.uid(), addr.gid()));
  }
  return Ok();
}

Status Bind(int fd, const std::string& name) {
  sockaddr_un sa;
  socklen_t len;
  if (!ToSockaddr(name, &sa, &len)) {
    return Error::Invalid(fmt::format("socket name {} is too long", ShowName(name)));
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), len) < 0) {
    if (errno == ENOENT) {
      return Error::Errno(fmt::format("bind {}: its directory does not exist", ShowName(name)));
    }
    return Error::Errno(fmt::format("bind {}", ShowName(name)));
  }
  return Ok();
}

}  // namespace

std::string ShowName(std::string_view name) {
  if (name.empty()) return "(unnamed)";
  if (!IsAbstract(name)) return std::string(name);
  std::string out = "@";
  for (char c : name.substr(1)) {
    unsigned char u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7f && u != '\\') ? std::string(1, c) : fmt::format("\\x{:02x}", u);
  }
  return out;
}

bool ParseSocketLink(std::string_view link, uint64_t* ino) {
  constexpr std::string_view kPrefix = "socket:[";
  if (!link.starts_with(kPrefix) || !link.ends_with("]")) return false;
  std::string_view digits = link.substr(kPrefix.size(), link.size() - kPrefix.size() - 1);
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *ino);
  return ec == std::errc() && end == digits.data() + digits.size() && !digits.empty();
}

std::string NameFromSockaddr(const sockaddr_un& sa, socklen_t len) {
  if (len <= kPathOffset) return "";
  size_t n = std::min<size_t>(len - kPathOffset, sizeof sa.sun_path);
  std::string_view bytes(sa.sun_path, n);
  if (IsAbstract(bytes)) return std::string(bytes);
  // A path ends at its first NUL (the kernel counts the terminator in len).
  return std::string(bytes.substr(0, bytes.find('\0')));
}

bool ToSockaddr(std::string_view name, sockaddr_un* sa, socklen_t* len) {
  *sa = {};
  sa->sun_family = AF_UNIX;
  if (name.size() > sizeof sa->sun_path) return false;
  std::memcpy(sa->sun_path, name.data(), name.size());
  // A path's terminator is counted when it fits (the kernel accepts both);
  // no name at all is just the family (an unnamed address).
  bool terminate = !name.empty() && !IsAbstract(name) && name.size() < sizeof sa->sun_path;
  size_t n = name.size() + (terminate ? 1 : 0);
  *len = static_cast<socklen_t>(kPathOffset + n);
  return true;
}

Result<std::string> SockName(int fd, bool peer) {
  sockaddr_un sa = {};
  socklen_t len = sizeof sa;
  int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&sa), &len)
               : getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  if (r < 0) return Error::Errno(peer ? "getpeername" : "getsockname");
  return NameFromSockaddr(sa, std::min<socklen_t>(len, sizeof sa));
}

Result<socklen_t> Target::Address(sockaddr_un* sa) const {
  std::string name = file.valid() ? fmt::format("/proc/self/fd/{}", file.get()) : this->name;
  socklen_t len;
  if (name.empty()) return Error::Invalid("an unnamed socket cannot be reached by address");
  if (!ToSockaddr(name, sa, &len)) return Error::Invalid("socket name too long");
  return len;
}

Result<Target> BindName(int fd, const image::UnixAddress& addr, bool keep) {
  const std::string& name = addr.name();
  Target target;
  if (IsAbstract(name)) {
    STASIS_TRY(Bind(fd, name));
    target.name = name;
    return target;
  }
  if (!name.starts_with('/')) {
    return Error::Unsupported(fmt::format("relative socket path {}", ShowName(name)));
  }
  PathAside aside;
  if (keep) {
    STASIS_TRY(ClearStale(name));
  } else {
    struct stat st;
    if (lstat(name.c_str(), &st) == 0) {
      STASIS_TRY(aside.Move(name));
    } else if (errno != ENOENT) {
      return Error::Errno(fmt::format("lstat {}", name));
    }
  }
  STASIS_TRY(Bind(fd, name));
  target.file.reset(ioctl(fd, kSiocUnixFile));
  if (!target.file.valid()) return Error::Errno(fmt::format("SIOCUNIXFILE of {}", name));
  if (keep) {
    STASIS_TRY(SetOwnerAndMode(name, addr));
  } else {
    if (unlink(name.c_str()) < 0) return Error::Errno(fmt::format("unlink {}", name));
    STASIS_TRY(aside.Restore());
  }
  return target;
}

}  // namespace stasis::kinds::unix_socket
