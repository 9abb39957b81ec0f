// rtnetlink, spoken directly: the few link, address and route requests an
// isolated session's network needs (session netns, veth pair, bridge), with
// no `ip` command in between. A Rtnl socket belongs to the network
// namespace of the thread that opened it, for good: open one per namespace.
#pragma once

#include <linux/netlink.h>
#include <stdint.h>

#include <array>
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

 private:
  explicit Rtnl(UniqueFd fd) : fd_(std::move(fd)) {}
  Result<std::vector<uint8_t>> Receive();
  UniqueFd fd_;
  uint32_t seq_ = 0;
};

}  // namespace stasis::sys
