#include "kinds/registry.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>

#include <map>

#include "kinds/chardev.h"
#include "kinds/creds.h"
#include "kinds/epoll.h"
#include "kinds/eventfd.h"
#include "kinds/fifo.h"
#include "kinds/fs_context.h"
#include "kinds/inotify.h"
#include "kinds/limits.h"
#include "kinds/mm.h"
#include "kinds/pipe.h"
#include "kinds/posix_timers.h"
#include "kinds/pty.h"
#include "kinds/regular_file.h"
#include "kinds/shmem.h"
#include "kinds/signalfd.h"
#include "kinds/signals.h"
#include "kinds/tcp_socket.h"
#include "kinds/timerfd.h"
#include "kinds/udp_socket.h"
#include "kinds/unix_socket.h"
#include "kinds/vdso.h"

namespace stasis::kinds {
namespace {

// Match order matters where two kinds could claim one fd.
constexpr const FdKind* kFdKinds[] = {
    // Before regular_file: an unlinked tmpfs file is a shared-memory object.
    &shmem::kKind,
    // Before chardev and fifo: it takes O_PATH fds of every file type.
    &regular_file::kKind,
    &chardev::kKind,
    &pty::kKind,
    &pipe::kKind,
    &tcp_socket::kKind,
    &udp_socket::kKind,
    &eventfd::kKind,
    &fifo::kKind,
    &signalfd::kKind,
    &timerfd::kKind,
    &inotify::kKind,
    &unix_socket::kKind,
    // Last only for readability: it restores after the others anyway
    // (restore_last), once its targets exist.
    &epoll::kKind,
};

// Dump order, and restore order within a phase (ProcessKind::phase).
constexpr const ProcessKind* kProcessKinds[] = {
    // The restore order within each phase is the one the puppet always had.
    &fs_context::kKind, &limits::kKind, &signals::kKind, &posix_timers::kKind,
    &creds::kKind,      &mm::kKind,     &vdso::kKind,
};

template <typename Kind>
const Kind* FindByName(std::span<const Kind* const> kinds, std::string_view name) {
  // Built once, read-only afterwards; the tables are short but an image
  // looks a kind up per File.
  static const std::map<std::string_view, const Kind*> by_name = [kinds] {
    std::map<std::string_view, const Kind*> out;
    for (const Kind* kind : kinds) out.emplace(kind->name, kind);
    return out;
  }();
  auto it = by_name.find(name);
  return it == by_name.end() ? nullptr : it->second;
}

}  // namespace

std::span<const FdKind* const> FdKinds() { return kFdKinds; }

const FdKind* FindFdKind(std::string_view name) { return FindByName(FdKinds(), name); }

std::span<const ProcessKind* const> ProcessKinds() { return kProcessKinds; }

const ProcessKind* FindProcessKind(std::string_view name) {
  return FindByName(ProcessKinds(), name);
}

Status DumpProcessKinds(DumpPhase phase, const ProcessDumpInput& in, image::Process* proc) {
  for (const ProcessKind* kind : ProcessKinds()) {
    if (kind->dump_phase == phase) STASIS_TRY(kind->dump(in, proc));
  }
  return Ok();
}

Status RestoreProcessKinds(RestorePhase phase, RemoteTask& task, const image::Process& proc) {
  for (const ProcessKind* kind : ProcessKinds()) {
    if (kind->restore_phase == phase) STASIS_TRY(kind->restore(task, proc));
  }
  return Ok();
}

std::string KindsMarkdown() {
  std::string out = "Per-process kinds (src/kinds/, registry.cc):\n\n";
  for (const ProcessKind* kind : ProcessKinds()) {
    out += fmt::format("- `{}`: {}\n", kind->name, kind->summary);
  }
  out += "\nFd kinds, in match order (src/kinds/, registry.cc):\n\n";
  for (const FdKind* kind : FdKinds())
    out += fmt::format("- `{}`: {}\n", kind->name, kind->summary);
  return out;
}

namespace {

// "netlink socket (protocol 0)", "raw IPv6 socket (protocol 58)": what a
// user needs to know which object of the program is in the way.
std::string DescribeSocket(int fd) {
  int domain = -1, type = -1, protocol = -1;
  socklen_t len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) return "socket";
  len = sizeof(int);
  getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
  len = sizeof(int);
  getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len);
  const char* family = domain == AF_INET      ? "IPv4"
                       : domain == AF_INET6   ? "IPv6"
                       : domain == AF_UNIX    ? "unix"
                       : domain == AF_NETLINK ? "netlink"
                       : domain == AF_PACKET  ? "packet"
                                              : nullptr;
  const char* shape = type == SOCK_STREAM      ? "stream "
                      : type == SOCK_DGRAM     ? "datagram "
                      : type == SOCK_RAW       ? "raw "
                      : type == SOCK_SEQPACKET ? "seqpacket "
                                               : "";
  std::string name = family ? std::string(family) : fmt::format("family {}", domain);
  return fmt::format("{}{} socket (protocol {})", shape, name, protocol);
}

}  // namespace

Error UnsupportedFd(const FdDumpInput& in) {
  std::string what;
  if (in.link.starts_with("socket:")) {
    what = DescribeSocket(in.local.get());
  } else if (in.link.starts_with("anon_inode:")) {
    what = in.link.substr(11);  // "[eventfd]", "[eventpoll]", "[io_uring]", ...
  } else if (S_ISCHR(in.st.st_mode)) {
    what = fmt::format("character device {}:{}", major(in.st.st_rdev), minor(in.st.st_rdev));
  } else if (S_ISFIFO(in.st.st_mode)) {
    what = "named FIFO";
  } else if (S_ISBLK(in.st.st_mode)) {
    what = "block device";
  } else {
    what = "this kind of file";
  }
  return Error::Unsupported(DescribeFd(in.pid, in.fd, in.link) + ": " + what +
                            " is not supported yet");
}

}  // namespace stasis::kinds
