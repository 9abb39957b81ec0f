// Restoring an isolated session (stasis run --net=isolated): its network
// (net/isolated_net.h) is rebuilt with the host link down, so that nothing
// the restored sockets send reaches the outside peers before every socket
// is back; LinkUp lifts that lock.
//
// What must be made inside the session's namespace (its sockets, its init,
// which the rest of the tree inherits the namespace from) is made inside
// Inside(): the calling thread enters the namespace for that call only and
// is back in its own when it returns, on success and on failure, so that
// an agent running several operations in one process never finds a thread
// of its own elsewhere. Without a session network (an image without one),
// every call is a no-op and Inside() just runs its function.
#pragma once

#include <optional>
#include <string>
#include <utility>

#include "net/isolated_net.h"
#include "process.pb.h"
#include "sys/log.h"
#include "sys/netns.h"
#include "sys/result.h"

namespace stasis::net {

class SessionNetRestore {
 public:
  // `log` must outlive the object.
  static Result<SessionNetRestore> Build(const image::Manifest& manifest, bool new_pid_ns,
                                         Logger& log);

  // The network rebuilt, if the image had one.
  const std::optional<NetConfig>& config() const { return config_; }

  // Runs f() with the calling thread inside the session's namespace.
  template <typename F>
  auto Inside(F&& f) -> decltype(f()) {
    if (!net_) return f();
    Result<sys::ScopedNetns> inside = sys::ScopedNetns::Enter(net_->netns_fd());
    if (!inside.ok()) return std::move(inside).error().Context("enter the session's network");
    auto result = f();
    Status left = inside->Leave();
    if (!left.ok() && result.ok()) {
      return std::move(left).error().Context("leave the session's network");
    }
    return result;
  }

  // Once the session's sockets left repair mode (one still in it drops what
  // arrives), before their resends and nudges reach the outside peers.
  Status LinkUp();
  // A restore that fails once the link is up takes it down before the
  // session's sockets close (the tree killed, the restorer's fds dropped):
  // what they send then (FIN, RST) must not reach the peers, whose
  // connections the image still holds. With the neighbour cache carried,
  // nothing else would hold it back.
  void DownUnlessCommitted();
  // The tree runs: the network is the session's now. Announces the
  // session's address from eth0 (net/announce.h), so the switches between
  // it and its peers learn where it is, which after a migration is another
  // machine.
  void Commit();

 private:
  explicit SessionNetRestore(Logger& log) : log_(&log) {}
  Logger* log_;
  // The restorer's own, where the dump's link keeper listens.
  sys::UniqueFd host_netns_;
  std::optional<NetConfig> config_;
  std::optional<IsolatedNet> net_;
  bool committed_ = false;
};

}  // namespace stasis::net
