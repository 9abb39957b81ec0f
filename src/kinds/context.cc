#include "kinds/context.h"

#include <fmt/format.h>

#include "sys/kernel_abi.h"

namespace stasis::kinds {

Result<uint64_t> RemoteTask::Put(const void* data, size_t len, size_t offset) {
  if (offset + len > scratch_size_) {
    return Error::Invalid(fmt::format("pid {}: {} bytes do not fit the scratch area", pid_, len));
  }
  STASIS_TRY(sys::WriteMemory(pid_, scratch_ + offset, data, len));
  return scratch_ + offset;
}

Status RemoteTask::Get(uint64_t remote, void* out, size_t len) {
  return sys::ReadMemory(pid_, remote, out, len);
}

Result<int> RemoteTask::PullFd(int local_fd) {
  if (restorer_pidfd_ < 0) return Error::Invalid("no restorer pidfd in the task");
  long fd = STASIS_TRY(Call("pidfd_getfd", sys::abi::kNrPidfdGetfd, restorer_pidfd_, local_fd, 0));
  return static_cast<int>(fd);
}

std::string DescribeFd(pid_t pid, int fd, const std::string& link) {
  return fmt::format("pid {} fd {} ({})", pid, fd, link);
}

}  // namespace stasis::kinds
