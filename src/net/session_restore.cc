#include "net/session_restore.h"

#include <fcntl.h>
#include <fmt/format.h>

#include <chrono>
#include <vector>

#include "net/announce.h"
#include "net/packet_keeper.h"
#include "net/session_image.h"

namespace stasis::net {

Result<SessionNetRestore> SessionNetRestore::Build(const image::Manifest& manifest, bool new_pid_ns,
                                                   Logger& log) {
  SessionNetRestore s(log);
  if (!manifest.has_net()) return s;
  if (!new_pid_ns) {
    return Error::Invalid(
        "an isolated session is restored into a new PID namespace; drop --pid-ns=host");
  }
  s.host_netns_.reset(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!s.host_netns_.valid()) return Error::Errno("open /proc/thread-self/ns/net");
  s.config_ = STASIS_TRY(NetFromProto(manifest.net()));
  s.net_.emplace(STASIS_TRY_CTX(IsolatedNet::Create(&*s.config_, /*host_up=*/false),
                                "rebuild the session network"));
  // Before any socket exists: what the sockets send once the link is up
  // goes out at once, instead of waiting for an address resolution whose
  // first request, sent while the link was still down, was lost.
  std::vector<sys::Neighbour> cache = STASIS_TRY(NeighboursFromProto(manifest.net()));
  STASIS_TRY(s.Inside([&] { return AddSessionNeighbours(cache); }));
  return s;
}

Status SessionNetRestore::LinkUp() {
  if (!net_) return Ok();
  STASIS_TRY(net_->SetHostUp(true));
  // eth0's state is asked from inside the session's namespace.
  bool forwarding = STASIS_TRY(Inside([&]() -> Result<bool> {
    return WaitLinkForwarding(config_->host_link, std::chrono::milliseconds(500));
  }));
  if (!forwarding) {
    log_->Warn(fmt::format("session link {} is not forwarding yet", config_->host_link));
  }
  // What the outside peers sent while the session was away, kept by the
  // dump's keeper if it ran here. It listens in the restorer's namespace
  // (its control socket is an abstract name), which the caller may have
  // left for the session's.
  sys::ScopedNetns host = STASIS_TRY(sys::ScopedNetns::Enter(host_netns_.get()));
  Result<std::string> kept = ReleaseLinkKeeper(config_->host_link);
  STASIS_TRY(host.Leave());
  if (!kept.ok()) {
    log_->Warn(kept.error().ToString());
  } else if (!kept->empty()) {
    log_->Info(*kept);
  }
  return Ok();
}

void SessionNetRestore::DownUnlessCommitted() {
  if (!net_ || committed_) return;
  Status down = net_->SetHostUp(false);
  if (!down.ok()) log_->Warn(down.error().ToString());
}

void SessionNetRestore::Commit() {
  if (!net_) return;
  committed_ = true;
  net_->Commit();
  // Not at LinkUp: until the tree is released here, a migration may still
  // abort and the session run on where it was, whose switches must not have
  // learnt otherwise. The tree runs now; a failed announce only delays the
  // switches' learning until the session's next frame, so it is no error.
  Status announced = Announce(net_->netns_fd(), kSessionLink, config_->address);
  if (!announced.ok()) log_->Warn(announced.error().ToString());
}

}  // namespace stasis::net
