// rtnetlink, spoken directly: the few link, address, route and neighbour
// requests an isolated session's network needs (session netns, veth pair,
// bridge, the session's neighbour cache), with
// no `ip` command in between. A Rtnl socket belongs to the network
// namespace of the thread that opened it, for good: open one per namespace.
#pragma once

#include <linux/netlink.h>
#include <stdint.h>

#include <array>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::sys {

using Mac = std::array<uint8_t, 6>;

// One netlink request being built: a header, a fixed family struct, then
// attributes, nested ones included. Pure, so tests can look at the bytes.
class NlMessage {
 public:
  NlMessage(uint16_t type, uint16_t flags);
  // Appends the fixed struct (ifinfomsg, ifaddrmsg, rtmsg) after the header.
  void Fixed(const void* data, size_t len);
  void Attr(uint16_t type, const void* data, size_t len);
  void AttrString(uint16_t type, const std::string& s);  // NUL-terminated
  void AttrU32(uint16_t type, uint32_t v) { Attr(type, &v, sizeof(v)); }
  // Nesting: Begin returns the offset to pass to End once the nest is full.
  size_t Begin(uint16_t type);
  void End(size_t offset);
  nlmsghdr* header() { return reinterpret_cast<nlmsghdr*>(buf_.data()); }
  const std::vector<uint8_t>& bytes() const { return buf_; }

 private:
  void Align();
  std::vector<uint8_t> buf_;
};

// The requests, built (pure):
struct VethSpec {
  std::string host_name;  // stays in the caller's namespace
  Mac host_mac;
  int master = 0;  // ifindex of the bridge the host end joins (0: none)
  std::string peer_name;
  Mac peer_mac;
  int peer_netns_fd = -1;  // where the peer end goes
};
NlMessage BuildNewVeth(const VethSpec& spec);
NlMessage BuildNewBridge(const std::string& name, const Mac& mac);
NlMessage BuildSetUp(int ifindex, bool up);
NlMessage BuildDelLink(int ifindex);
// IPv4 address (network byte order) with its prefix length on ifindex.
NlMessage BuildNewAddr4(int ifindex, uint32_t addr, int prefix);
// IPv4 default route via gateway (network byte order) out of ifindex.
NlMessage BuildDefaultRoute4(int ifindex, uint32_t gateway);

// One entry of a neighbour cache (ARP for IPv4, NDP for IPv6), as
// RTM_NEWNEIGH shows it.
struct Neighbour {
  uint8_t family = 0;           // AF_INET or AF_INET6
  std::vector<uint8_t> dst;     // the peer's address, 4 or 16 bytes
  std::vector<uint8_t> lladdr;  // its link-layer address; empty if none known
  uint16_t state = 0;           // NUD_*
  uint8_t flags = 0;            // NTF_* (NTF_ROUTER: an IPv6 router)
  bool operator==(const Neighbour&) const = default;
};
// "198.18.0.3 lladdr 02:..:ff" for messages.
std::string FormatNeighbour(const Neighbour& n);
// Adds or replaces the entry on ifindex, with n.state and n.flags.
NlMessage BuildNewNeigh(int ifindex, const Neighbour& n);
// Dumps the neighbour caches of every family.
NlMessage BuildGetNeigh();
// The IPv4 or IPv6 entry an RTM_NEWNEIGH message of a dump describes, if it
// is on ifindex (other families, links and messages: none). Pure.
std::optional<Neighbour> ParseNeighbour(const nlmsghdr* msg, int ifindex);

class Rtnl {
 public:
  // A NETLINK_ROUTE socket in the calling thread's network namespace.
  static Result<Rtnl> Open();
  // Sends a request and waits for its acknowledgement; the kernel's error
  // comes back as an Error carrying its errno.
  Status Request(NlMessage& msg, const std::string& what);
  // ifindex of `name` in this socket's namespace; kNotFound if none.
  Result<int> IndexOf(const std::string& name);
  // The IPv4 addresses (with prefix lengths) on ifindex.
  Result<std::vector<std::pair<uint32_t, int>>> Addresses4(int ifindex);
  // The IPv4 and IPv6 neighbour entries of ifindex, whatever their state.
  Result<std::vector<Neighbour>> Neighbours(int ifindex);

 private:
  explicit Rtnl(UniqueFd fd) : fd_(std::move(fd)) {}
  Result<std::vector<uint8_t>> Receive();
  // Sends a dump request and hands each answer of it to `each`.
  Status Dump(NlMessage& msg, const char* what, const std::function<void(const nlmsghdr*)>& each);
  UniqueFd fd_;
  uint32_t seq_ = 0;
};

}  // namespace stasis::sys
