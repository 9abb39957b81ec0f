#include "sys/netns.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sched.h>

#include <thread>

namespace stasis::sys {

Result<UniqueFd> CreateNetns() {
  int fd = -1, err = 0;
  std::thread maker([&] {
    if (unshare(CLONE_NEWNET) < 0) {
      err = errno;
      return;
    }
    fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (fd < 0) err = errno;
  });
  maker.join();
  if (fd < 0) return Error::FromErrno("create a network namespace (unshare CLONE_NEWNET)", err);
  return UniqueFd(fd);
}

Result<UniqueFd> OpenNetnsOf(pid_t pid) {
  std::string path = fmt::format("/proc/{}/ns/net", pid);
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Error::Errno("open " + path);
  return fd;
}

Result<ScopedNetns> ScopedNetns::Enter(int netns_fd) {
  UniqueFd old(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!old.valid()) return Error::Errno("open /proc/thread-self/ns/net");
  if (setns(netns_fd, CLONE_NEWNET) < 0) return Error::Errno("setns(CLONE_NEWNET)");
  return ScopedNetns(std::move(old));
}

Status ScopedNetns::Leave() {
  if (!old_.valid()) return Ok();
  UniqueFd old = std::move(old_);
  if (setns(old.get(), CLONE_NEWNET) < 0) return Error::Errno("setns back (CLONE_NEWNET)");
  return Ok();
}

}  // namespace stasis::sys
