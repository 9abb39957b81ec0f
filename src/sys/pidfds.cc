#include "sys/pidfds.h"

#include <fmt/format.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>

#include "sys/kernel_abi.h"
#include "sys/proc.h"

namespace stasis::sys {

Result<UniqueFd> PidfdOpen(pid_t pid) {
  int fd = static_cast<int>(syscall(abi::kNrPidfdOpen, pid, 0));
  if (fd < 0) return Error::Errno(fmt::format("pidfd_open({})", pid));
  return UniqueFd(fd);
}

Result<UniqueFd> PidfdGetfd(int pidfd, pid_t pid_for_errors, int fd) {
  int local = static_cast<int>(syscall(abi::kNrPidfdGetfd, pidfd, fd, 0));
  if (local < 0) return Error::Errno(fmt::format("pid {} fd {}: pidfd_getfd", pid_for_errors, fd));
  return UniqueFd(local);
}

Result<pid_t> PidOfPidfd(int pidfd) {
  std::string text = STASIS_TRY(proc::ReadFile(fmt::format("/proc/self/fdinfo/{}", pidfd)));
  proc::FdInfo info = STASIS_TRY(proc::ParseFdInfo(text));
  for (const auto& [key, value] : info.extra) {
    if (key == "Pid") return static_cast<pid_t>(std::atoi(value.c_str()));
  }
  return Error(ErrorCode::kFailed, "pidfd fdinfo has no Pid line");
}

Result<bool> SameFile(pid_t pid1, int fd1, pid_t pid2, int fd2) {
  long r = syscall(abi::kNrKcmp, pid1, pid2, abi::kKcmpFile, fd1, fd2);
  if (r < 0) return Error::Errno(fmt::format("kcmp(FILE, {}:{}, {}:{})", pid1, fd1, pid2, fd2));
  return r == 0;
}

}  // namespace stasis::sys
