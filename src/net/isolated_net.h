// The network of an isolated session (`stasis run --net=isolated`).
//
// The session gets its own network namespace holding `lo` (up) and `eth0`,
// one end of a veth pair; the other end, named "st" + the session address
// in hex (e.g. st c6120502 for 198.18.5.2), stays in the host namespace and
// is a port of a bridge (default "stasis0"). eth0 has the session's IPv4
// address and a default route via the bridge's address (the gateway).
// Both veth ends get MAC addresses derived from the session address, so a
// restored session answers with the same MAC and its peers' neighbour
// caches stay valid. The host link's name, derived from the address too,
// is what makes a second session with the same address fail (EEXIST).
//
// A bridge stasis creates gets a fixed MAC and the gateway address (the
// first host of the session's subnet, or its last when the session took
// the first). An existing bridge is used as it is: the gateway is its
// address in the session's subnet, if any (else no default route).
//
// The network lock of an isolated session is its host link: down, no
// packet crosses between the session and the rest of the world, in either
// direction, so its outside peers see neither FIN nor RST nor ICMP. The
// dump takes it down before any socket is touched; a restore builds the
// namespace with it down and brings it up once every socket is back.
//
// The session's neighbour cache (ARP, NDP entries of eth0) goes along: a
// new namespace starts with an empty one, and the first request to resolve
// a peer would be sent while the link is still down and lost, holding
// everything for that peer until the next solicitation a second later.
#pragma once

#include <stdint.h>

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "sys/result.h"
#include "sys/rtnl.h"
#include "sys/unique_fd.h"

namespace stasis::net {

inline constexpr char kDefaultBridge[] = "stasis0";
// Sessions without --address take the lowest free address of this subnet.
inline constexpr char kDefaultSubnet[] = "10.83.0.0/16";
inline constexpr char kDefaultNetwork[] = "10.83.0.0";
inline constexpr int kDefaultPrefix = 16;
inline constexpr char kSessionLink[] = "eth0";

struct NetConfig {
  uint32_t address = 0;  // network byte order
  int prefix = 0;
  uint32_t gateway = 0;  // 0: none (no default route)
  std::string bridge;
  sys::Mac mac = {};       // eth0's, inside the session
  sys::Mac host_mac = {};  // the host end's
  std::string host_link;
};

std::string FormatIp4(uint32_t addr);
Result<uint32_t> ParseIp4(const std::string& text);
std::string FormatMac(const sys::Mac& mac);
Result<sys::Mac> ParseMac(const std::string& text);
std::string FormatCidr(uint32_t addr, int prefix);
// "A.B.C.D/P", P in 1..30 (room for the address and a gateway).
Result<std::pair<uint32_t, int>> ParseCidr(const std::string& text);

// The config for a session at `cidr` ("" picks the lowest free host of
// kDefaultSubnet, avoiding `taken`) on `bridge` ("" for kDefaultBridge):
// names and MACs derived from the address; the gateway is filled in by
// IsolatedNet::Create. Pure.
Result<NetConfig> PlanNet(const std::string& cidr, const std::string& bridge,
                          const std::vector<uint32_t>& taken);

// A built session network. Until Commit, destruction deletes the veth pair
// (a failed run or restore leaves nothing behind; the bridge stays, as
// other sessions may use it).
class IsolatedNet {
 public:
  // Builds the namespace, the veth pair and the bridge if missing, in the
  // calling thread's namespace. `config->gateway` is decided here when 0.
  static Result<IsolatedNet> Create(NetConfig* config, bool host_up);
  // The moved-from object owns no link any more: its destruction deletes
  // nothing.
  IsolatedNet(IsolatedNet&& o) noexcept
      : host_(std::move(o.host_)),
        netns_(std::move(o.netns_)),
        host_index_(std::exchange(o.host_index_, 0)),
        committed_(o.committed_) {}
  IsolatedNet& operator=(IsolatedNet&&) = delete;
  ~IsolatedNet();

  int netns_fd() const { return netns_.get(); }
  Status SetHostUp(bool up);
  void Commit() { committed_ = true; }

 private:
  IsolatedNet(sys::Rtnl host, sys::UniqueFd netns, int host_index)
      : host_(std::move(host)), netns_(std::move(netns)), host_index_(host_index) {}
  sys::Rtnl host_;
  sys::UniqueFd netns_;
  int host_index_ = 0;
  bool committed_ = false;
};

// The entries of the session's eth0 (in the calling thread's namespace:
// call it from inside the session's) worth carrying to a restore: those with
// a link-layer address in a state the kernel sends on (REACHABLE, STALE,
// DELAY, PROBE, PERMANENT). NOARP ones the kernel makes itself.
Result<std::vector<sys::Neighbour>> ReadSessionNeighbours();
bool CarriedNeighbour(const sys::Neighbour& n);
// What a carried entry becomes in the new namespace: PERMANENT stays so,
// the rest is STALE, which the kernel uses at once and re-verifies by
// itself (DELAY, then a unicast probe). Only NTF_ROUTER is kept. Pure.
sys::Neighbour RestoredNeighbour(const sys::Neighbour& dumped);
// Adds them to the session's eth0 (from inside the session's namespace),
// before any socket is made there; an entry that cannot be added is an
// error naming it.
Status AddSessionNeighbours(const std::vector<sys::Neighbour>& carried);
// Taking the host link down takes eth0's carrier, and the kernel then
// evicts every entry of eth0 that is not PERMANENT, asynchronously (link
// watch). Waits until none of `carried` is left in a usable state (from
// inside the session's namespace), so that entries added back after it
// stay; false on timeout (a kernel that keeps them).
bool WaitNeighboursEvicted(const std::vector<sys::Neighbour>& carried,
                           std::chrono::milliseconds timeout);

// The lock on a running session's host link (by name, in the caller's
// namespace).
Status SetHostLinkUp(const std::string& host_link, bool up);
// Deletes the veth pair of a session whose tree is gone (its namespace may
// take a while to be freed; its link need not wait for that). A link
// already gone is fine.
Status DeleteHostLink(const std::string& host_link);
// Waits until the host link carries traffic: operstate up (the veth's
// carrier comes up asynchronously), as a bridge port forwarding, and the
// session's eth0 running (IFF_RUNNING, asked from the calling thread's
// namespace: call it from inside the session's). What is sent before that
// is lost. False on timeout.
bool WaitLinkForwarding(const std::string& host_link, std::chrono::milliseconds timeout);
// Waits until the host link is gone (its namespace freed once the session
// ended); false on timeout.
bool WaitLinkGone(const std::string& host_link, std::chrono::milliseconds timeout);

}  // namespace stasis::net
