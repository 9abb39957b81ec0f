#include "net/session_dump.h"

#include <fmt/format.h>

#include <utility>

#include "net/packet_keeper.h"
#include "sys/proc.h"

namespace stasis::net {

Result<SessionNetDump> SessionNetDump::Begin(pid_t init_pid, pid_t root, const NetConfig& net,
                                             Logger& log) {
  std::string ns = STASIS_TRY(sys::proc::ReadLink(fmt::format("/proc/{}/ns/net", init_pid)));
  std::string root_ns = STASIS_TRY(sys::proc::ReadLink(fmt::format("/proc/{}/ns/net", root)));
  if (root_ns != ns) {
    return Error::Unsupported(fmt::format(
        "pid {} is not in the network namespace of its session's init (pid {})", root, init_pid));
  }
  sys::UniqueFd fd = STASIS_TRY(sys::OpenNetnsOf(init_pid));
  return SessionNetDump(net, std::move(fd), ns, log);
}

SessionNetDump::SessionNetDump(SessionNetDump&& o) noexcept
    : net_(std::move(o.net_)),
      netns_(std::move(o.netns_)),
      netns_name_(std::move(o.netns_name_)),
      log_(o.log_),
      neighbours_(std::move(o.neighbours_)),
      locked_(o.locked_),
      moved_(o.moved_),
      killed_(o.killed_),
      active_(std::exchange(o.active_, false)) {}

Result<sys::ScopedNetns> SessionNetDump::Enter() const {
  return STASIS_TRY_CTX(sys::ScopedNetns::Enter(netns_.get()), "enter the session's network");
}

Status SessionNetDump::Lock() {
  {
    // Before the link goes down: eth0 loses its carrier with it, and the
    // kernel then evicts every entry that is not PERMANENT. The tree is
    // frozen already, so the cache can only change by what peers send.
    sys::ScopedNetns inside = STASIS_TRY(Enter());
    neighbours_ = STASIS_TRY_CTX(ReadSessionNeighbours(), "session network");
    STASIS_TRY(inside.Leave());
  }
  // What outside peers send while the link is down is kept, and sent in
  // again once it is up (the dump's own, or a restore's).
  Status keeper = StartLinkKeeper({net_.host_link, net_.bridge, net_.mac, net_.address});
  if (!keeper.ok()) {
    log_->Warn(fmt::format(
        "session link {} without a packet keeper ({}): peers will resend what they send "
        "meanwhile on their own timers",
        net_.host_link, keeper.error().ToString()));
  }
  STASIS_TRY(SetHostLinkUp(net_.host_link, false));
  locked_ = true;
  sys::ScopedNetns inside = STASIS_TRY(Enter());
  // The cache comes back at once (STALE, as at a restore): a session that
  // goes on running (--leave-running, a failed dump) would otherwise
  // resolve its peers anew, and the requests it sends while the link is
  // down are lost, holding its packets for a second.
  (void)WaitNeighboursEvicted(neighbours_, std::chrono::milliseconds(100));
  return AddSessionNeighbours(neighbours_);
}

Status SessionNetDump::Unlock() {
  if (!locked_) return Ok();
  locked_ = false;
  STASIS_TRY(SetHostLinkUp(net_.host_link, true));
  // The link's bridge port and the session's eth0 come up asynchronously.
  {
    sys::ScopedNetns in = STASIS_TRY(Enter());
    (void)WaitLinkForwarding(net_.host_link, std::chrono::milliseconds(500));
  }
  Result<std::string> kept = ReleaseLinkKeeper(net_.host_link);
  if (!kept.ok()) log_->Warn(kept.error().ToString());
  return Ok();
}

void SessionNetDump::WaitSessionGone() {
  // The tree is dead: its link goes now, rather than whenever the kernel
  // gets round to freeing the namespace (seconds on a busy host).
  Status deleted = DeleteHostLink(net_.host_link);
  if (!deleted.ok()) log_->Warn(deleted.error().ToString());
  if (!WaitLinkGone(net_.host_link, std::chrono::seconds(5))) {
    log_->Warn(
        fmt::format("the session link {} is still there 5 s after the dump", net_.host_link));
  }
}

SessionNetDump::~SessionNetDump() {
  if (!active_) return;
  if (locked_ && !killed_) {
    Status up = Unlock();
    if (!up.ok()) log_->Warn("network lock: " + up.error().ToString());
  }
  netns_.reset();
  if (killed_) WaitSessionGone();
  if (moved_) QuitLinkKeeper(net_.host_link);
}

}  // namespace stasis::net
