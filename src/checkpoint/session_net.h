// Dumping an isolated session (sys/isolated_net.h): its tasks live in the
// session's network namespace, which the dump accepts only when it is the
// namespace of the session's own init (a stasis init) and the root's.
//
// Lock() reads the session's neighbour cache (the image carries it), takes
// the session's host link down (the network lock: nothing reaches the
// outside peers, nothing comes in), puts back the cache entries the
// carrier loss evicted, and moves the dumping thread into the session's
// namespace, where sock_diag sees the session's sockets.
// Unless the tree was killed (MarkKilled), destruction puts everything back:
// the thread returns and the link comes up again (failed dump,
// --leave-running). After a kill, destruction deletes the veth pair (the
// namespace itself is freed once the init has ended the session and
// nothing holds a socket of it, which can take seconds), so that a restore
// right after can create it again. Declare it before anything holding the
// tree's files.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "sys/isolated_net.h"
#include "sys/netns.h"
#include "sys/result.h"

namespace stasis::checkpoint {

class SessionNetDump {
 public:
  static Result<SessionNetDump> Begin(pid_t init_pid, pid_t root, const sys::NetConfig& net);
  SessionNetDump(SessionNetDump&&) noexcept;
  SessionNetDump& operator=(SessionNetDump&&) = delete;
  ~SessionNetDump();

  Status Lock();
  // Lifts the lock now (the dumping thread leaves, the link comes up).
  Status Unlock();
  void MarkKilled() { killed_ = true; }
  // eth0's neighbour entries as Lock() found them.
  const std::vector<sys::Neighbour>& neighbours() const { return neighbours_; }

 private:
  void WaitSessionGone();
  SessionNetDump(sys::NetConfig net, sys::UniqueFd netns) : net_(net), netns_(std::move(netns)) {}
  sys::NetConfig net_;
  sys::UniqueFd netns_;
  std::optional<sys::ScopedNetns> inside_;
  std::vector<sys::Neighbour> neighbours_;
  bool locked_ = false;
  bool killed_ = false;
  bool active_ = true;
};

}  // namespace stasis::checkpoint
