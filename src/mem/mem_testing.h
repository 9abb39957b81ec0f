// Helpers of the mem unit tests, which run their pages through a forked
// child process.
#pragma once

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

namespace stasis::mem::test_support {

inline constexpr uint64_t kPage = 4096;

// Kills and reaps the forked process and closes the pipes, also when an
// assertion ends the test early (a child blocked on a pipe then sees EOF).
struct Cleanup {
  pid_t pid = -1;
  std::vector<int> fds;
  ~Cleanup() {
    for (int fd : fds) close(fd);
    if (pid > 0 && kill(pid, SIGKILL) == 0) waitpid(pid, nullptr, 0);
  }
};

// In the child: `pages` private anonymous pages, read-write (MAP_FAILED on
// failure).
inline uint8_t* MapPages(uint64_t pages) {
  return static_cast<uint8_t*>(
      mmap(nullptr, pages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
}

}  // namespace stasis::mem::test_support
