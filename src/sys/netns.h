// Network namespaces, per thread. setns(CLONE_NEWNET) moves only the
// calling thread; what it then creates (sockets, netlink sockets, children
// it forks or clones) belongs to that namespace. Stasis uses this to make a
// session's sockets, links and init inside the session's own namespace.
#pragma once

#include <sys/types.h>

#include <string>

#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::sys {

// A new, empty network namespace (made in a short-lived thread, so the
// caller stays where it is); the returned fd holds it.
Result<UniqueFd> CreateNetns();
// The namespace of pid (/proc/PID/ns/net), held open.
Result<UniqueFd> OpenNetnsOf(pid_t pid);

// Moves the calling thread into a network namespace until destruction (or
// Leave), then back to where it was.
class ScopedNetns {
 public:
  static Result<ScopedNetns> Enter(int netns_fd);
  ScopedNetns(ScopedNetns&& o) noexcept = default;
  ScopedNetns& operator=(ScopedNetns&&) = delete;
  ~ScopedNetns() { (void)Leave(); }
  Status Leave();

 private:
  explicit ScopedNetns(UniqueFd old) : old_(std::move(old)) {}
  UniqueFd old_;
};

}  // namespace stasis::sys
