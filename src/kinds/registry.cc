#include "kinds/registry.h"

#include <fmt/format.h>
#include <sys/sysmacros.h>

#include "kinds/chardev.h"
#include "kinds/epoll.h"
#include "kinds/eventfd.h"
#include "kinds/fifo.h"
#include "kinds/inotify.h"
#include "kinds/pipe.h"
#include "kinds/pty.h"
#include "kinds/regular_file.h"
#include "kinds/shmem.h"
#include "kinds/signalfd.h"
#include "kinds/tcp_pending.h"
#include "kinds/tcp_socket.h"
#include "kinds/timerfd.h"
#include "kinds/udp_socket.h"
#include "kinds/unix_socket.h"

namespace stasis::kinds {

const std::vector<FdKind>& FdKinds() {
  static const std::vector<FdKind> kinds = {
      // Before regular_file: an unlinked tmpfs file is a shared-memory object.
      {shmem::kName, shmem::Matches, shmem::Dump, shmem::Restore},
      // Before chardev and fifo: it takes O_PATH fds of every file type.
      {regular_file::kName, regular_file::Matches, regular_file::Dump, regular_file::Restore,
       /*restore_last=*/false, regular_file::AfterInstall},
      {chardev::kName, chardev::Matches, chardev::Dump, chardev::Restore},
      {pty::kName, pty::Matches, pty::Dump, pty::Restore, /*restore_last=*/false, pty::AfterInstall,
       pty::AfterTree, pty::AfterInstall},
      {pipe::kName, pipe::Matches, pipe::Dump, pipe::Restore},
      {tcp_socket::kName, tcp_socket::Matches, tcp_socket::Dump, tcp_socket::Restore,
       /*restore_last=*/false, nullptr, nullptr, nullptr, tcp_pending::ApplyLate,
       tcp_socket::Flows},
      {udp_socket::kName, udp_socket::Matches, udp_socket::Dump, udp_socket::Restore},
      {eventfd::kName, eventfd::Matches, eventfd::Dump, eventfd::Restore},
      {fifo::kName, fifo::Matches, fifo::Dump, fifo::Restore},
      {signalfd::kName, signalfd::Matches, signalfd::Dump, signalfd::Restore},
      {timerfd::kName, timerfd::Matches, timerfd::Dump, timerfd::Restore},
      {inotify::kName, inotify::Matches, inotify::Dump, inotify::Restore},
      {unix_socket::kName, unix_socket::Matches, unix_socket::Dump, unix_socket::Restore,
       /*restore_last=*/false, nullptr, nullptr, nullptr, unix_socket::ApplyLate},
      {epoll::kName, epoll::Matches, epoll::Dump, epoll::Restore, /*restore_last=*/true},
  };
  return kinds;
}

const FdKind* FindFdKind(std::string_view name) {
  for (const FdKind& kind : FdKinds()) {
    if (name == kind.name) return &kind;
  }
  return nullptr;
}

Error UnsupportedFd(const FdDumpInput& in) {
  std::string what;
  if (in.link.starts_with("socket:")) {
    what = "socket";
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
