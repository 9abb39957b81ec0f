// Dumping an isolated session (net/isolated_net.h): its tasks live in the
// session's network namespace, which the dump accepts only when it is the
// namespace of the session's own init (a stasis init) and the root's.
//
// Lock() reads the session's neighbour cache (the image carries it), takes
// the session's host link down (the network lock: nothing reaches the
// outside peers, nothing comes in, so no flow needs a table: the dump
// says so with FlowLock::CoveredByLink), and puts back the cache entries
// the carrier loss evicted. The steps that must see the session's sockets
// through sock_diag run inside Enter()'s guard, which returns the calling
// thread to its own namespace on every path: nothing here leaves a thread
// in another namespace.
// Unless the tree was killed (MarkKilled), destruction puts everything back:
// the link comes up again (failed dump, --leave-running). After a kill, destruction deletes the
// veth pair (the namespace itself is freed once the init has ended the session and nothing holds a
// socket of it, which can take seconds), so that a restore right after can create it again. Declare
// it before anything holding the tree's files.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "net/isolated_net.h"
#include "sys/log.h"
#include "sys/netns.h"
#include "sys/result.h"

namespace stasis::net {

class SessionNetDump {
 public:
  // `log` must outlive the object: its destruction reports there.
  static Result<SessionNetDump> Begin(pid_t init_pid, pid_t root, const NetConfig& net,
                                      Logger& log);
  SessionNetDump(SessionNetDump&&) noexcept;
  SessionNetDump& operator=(SessionNetDump&&) = delete;
  ~SessionNetDump();

  Status Lock();
  // Lifts the lock now (the link comes up).
  Status Unlock();
  void MarkKilled() { killed_ = true; }
  // Killed because it now runs on another machine (a migration): no
  // restore here will take what the link's keeper holds.
  void MarkMoved() {
    killed_ = true;
    moved_ = true;
  }
  // Moves the calling thread into the session's namespace until the guard
  // goes.
  Result<sys::ScopedNetns> Enter() const;
  // The session's namespace as /proc/PID/ns/net names it ("net:[INODE]").
  const std::string& netns_name() const { return netns_name_; }
  // eth0's neighbour entries as Lock() found them.
  const std::vector<sys::Neighbour>& neighbours() const { return neighbours_; }

 private:
  void WaitSessionGone();
  SessionNetDump(NetConfig net, sys::UniqueFd netns, std::string netns_name, Logger& log)
      : net_(std::move(net)),
        netns_(std::move(netns)),
        netns_name_(std::move(netns_name)),
        log_(&log) {}
  NetConfig net_;
  sys::UniqueFd netns_;
  std::string netns_name_;
  Logger* log_;
  std::vector<sys::Neighbour> neighbours_;
  bool locked_ = false;
  bool moved_ = false;
  bool killed_ = false;
  bool active_ = true;
};

}  // namespace stasis::net
