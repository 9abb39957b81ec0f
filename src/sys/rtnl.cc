#include "sys/rtnl.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <linux/if.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <sys/socket.h>

#include <cstring>

namespace stasis::sys {

NlMessage::NlMessage(uint16_t type, uint16_t flags) {
  buf_.resize(NLMSG_HDRLEN);
  nlmsghdr* h = header();
  h->nlmsg_type = type;
  h->nlmsg_flags = flags;
  h->nlmsg_len = static_cast<uint32_t>(buf_.size());
}

void NlMessage::Align() {
  buf_.resize(NLMSG_ALIGN(buf_.size()));
  header()->nlmsg_len = static_cast<uint32_t>(buf_.size());
}

void NlMessage::Fixed(const void* data, size_t len) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  buf_.insert(buf_.end(), p, p + len);
  Align();
}

void NlMessage::Attr(uint16_t type, const void* data, size_t len) {
  nlattr a = {static_cast<uint16_t>(NLA_HDRLEN + len), type};
  const uint8_t* h = reinterpret_cast<const uint8_t*>(&a);
  buf_.insert(buf_.end(), h, h + NLA_HDRLEN);
  const uint8_t* p = static_cast<const uint8_t*>(data);
  buf_.insert(buf_.end(), p, p + len);
  Align();
}

void NlMessage::AttrString(uint16_t type, const std::string& s) {
  Attr(type, s.c_str(), s.size() + 1);
}

size_t NlMessage::Begin(uint16_t type) {
  size_t at = buf_.size();
  Attr(type | NLA_F_NESTED, nullptr, 0);
  return at;
}

void NlMessage::End(size_t offset) {
  uint16_t len = static_cast<uint16_t>(buf_.size() - offset);
  std::memcpy(buf_.data() + offset, &len, sizeof(len));
}

namespace {

constexpr uint16_t kCreate = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;

ifinfomsg LinkHeader(int ifindex) {
  ifinfomsg ifi = {};
  ifi.ifi_family = AF_UNSPEC;
  ifi.ifi_index = ifindex;
  return ifi;
}

}  // namespace

NlMessage BuildNewVeth(const VethSpec& spec) {
  NlMessage m(RTM_NEWLINK, kCreate);
  ifinfomsg ifi = LinkHeader(0);
  m.Fixed(&ifi, sizeof(ifi));
  m.AttrString(IFLA_IFNAME, spec.host_name);
  m.Attr(IFLA_ADDRESS, spec.host_mac.data(), spec.host_mac.size());
  if (spec.master > 0) m.AttrU32(IFLA_MASTER, static_cast<uint32_t>(spec.master));
  size_t info = m.Begin(IFLA_LINKINFO);
  m.AttrString(IFLA_INFO_KIND, "veth");
  size_t data = m.Begin(IFLA_INFO_DATA);
  size_t peer = m.Begin(VETH_INFO_PEER);
  m.Fixed(&ifi, sizeof(ifi));  // the peer's own ifinfomsg opens its nest
  m.AttrString(IFLA_IFNAME, spec.peer_name);
  m.Attr(IFLA_ADDRESS, spec.peer_mac.data(), spec.peer_mac.size());
  if (spec.peer_netns_fd >= 0) m.AttrU32(IFLA_NET_NS_FD, static_cast<uint32_t>(spec.peer_netns_fd));
  m.End(peer);
  m.End(data);
  m.End(info);
  return m;
}

NlMessage BuildNewBridge(const std::string& name, const Mac& mac) {
  NlMessage m(RTM_NEWLINK, kCreate);
  ifinfomsg ifi = LinkHeader(0);
  m.Fixed(&ifi, sizeof(ifi));
  m.AttrString(IFLA_IFNAME, name);
  // A fixed address: otherwise a bridge takes its lowest port's, and its
  // neighbours' caches go stale whenever a session comes or goes.
  m.Attr(IFLA_ADDRESS, mac.data(), mac.size());
  size_t info = m.Begin(IFLA_LINKINFO);
  m.AttrString(IFLA_INFO_KIND, "bridge");
  m.End(info);
  return m;
}

NlMessage BuildSetUp(int ifindex, bool up) {
  NlMessage m(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
  ifinfomsg ifi = LinkHeader(ifindex);
  ifi.ifi_flags = up ? IFF_UP : 0;
  ifi.ifi_change = IFF_UP;
  m.Fixed(&ifi, sizeof(ifi));
  return m;
}

NlMessage BuildDelLink(int ifindex) {
  NlMessage m(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK);
  ifinfomsg ifi = LinkHeader(ifindex);
  m.Fixed(&ifi, sizeof(ifi));
  return m;
}

NlMessage BuildNewAddr4(int ifindex, uint32_t addr, int prefix) {
  NlMessage m(RTM_NEWADDR, kCreate);
  ifaddrmsg ifa = {};
  ifa.ifa_family = AF_INET;
  ifa.ifa_prefixlen = static_cast<uint8_t>(prefix);
  ifa.ifa_scope = RT_SCOPE_UNIVERSE;
  ifa.ifa_index = static_cast<uint32_t>(ifindex);
  m.Fixed(&ifa, sizeof(ifa));
  m.Attr(IFA_LOCAL, &addr, sizeof(addr));
  m.Attr(IFA_ADDRESS, &addr, sizeof(addr));
  if (prefix < 31) {
    uint32_t host_mask = prefix == 0 ? ~0u : (~0u >> prefix);
    uint32_t broadcast = addr | htonl(host_mask);
    m.Attr(IFA_BROADCAST, &broadcast, sizeof(broadcast));
  }
  return m;
}

NlMessage BuildDefaultRoute4(int ifindex, uint32_t gateway) {
  NlMessage m(RTM_NEWROUTE, kCreate);
  rtmsg rt = {};
  rt.rtm_family = AF_INET;
  rt.rtm_table = RT_TABLE_MAIN;
  rt.rtm_protocol = RTPROT_BOOT;
  rt.rtm_scope = RT_SCOPE_UNIVERSE;
  rt.rtm_type = RTN_UNICAST;
  m.Fixed(&rt, sizeof(rt));
  m.Attr(RTA_GATEWAY, &gateway, sizeof(gateway));
  m.AttrU32(RTA_OIF, static_cast<uint32_t>(ifindex));
  return m;
}

Result<Rtnl> Rtnl::Open() {
  UniqueFd fd(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
  if (!fd.valid()) return Error::Errno("socket(NETLINK_ROUTE)");
  sockaddr_nl local = {};
  local.nl_family = AF_NETLINK;
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&local), sizeof(local)) < 0) {
    return Error::Errno("bind(NETLINK_ROUTE)");
  }
  return Rtnl(std::move(fd));
}

Result<std::vector<uint8_t>> Rtnl::Receive() {
  std::vector<uint8_t> buf(32768);
  for (;;) {
    ssize_t n = recv(fd_.get(), buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::Errno("recv(NETLINK_ROUTE)");
    buf.resize(static_cast<size_t>(n));
    return buf;
  }
}

Status Rtnl::Request(NlMessage& msg, const std::string& what) {
  nlmsghdr* h = msg.header();
  h->nlmsg_seq = ++seq_;
  if (send(fd_.get(), msg.bytes().data(), msg.bytes().size(), 0) < 0) {
    return Error::Errno(what + ": send(NETLINK_ROUTE)");
  }
  for (;;) {
    std::vector<uint8_t> buf = STASIS_TRY_CTX(Receive(), what);
    int len = static_cast<int>(buf.size());
    for (nlmsghdr* r = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(r, len);
         r = NLMSG_NEXT(r, len)) {
      if (r->nlmsg_seq != seq_ || r->nlmsg_type != NLMSG_ERROR) continue;
      int err = -static_cast<const nlmsgerr*>(NLMSG_DATA(r))->error;
      if (err != 0) return Error::FromErrno(what, err);
      return Ok();
    }
  }
}

Result<int> Rtnl::IndexOf(const std::string& name) {
  NlMessage m(RTM_GETLINK, NLM_F_REQUEST);
  ifinfomsg ifi = LinkHeader(0);
  m.Fixed(&ifi, sizeof(ifi));
  m.AttrString(IFLA_IFNAME, name);
  m.header()->nlmsg_seq = ++seq_;
  if (send(fd_.get(), m.bytes().data(), m.bytes().size(), 0) < 0) {
    return Error::Errno("send(RTM_GETLINK)");
  }
  for (;;) {
    std::vector<uint8_t> buf = STASIS_TRY(Receive());
    int len = static_cast<int>(buf.size());
    for (nlmsghdr* r = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(r, len);
         r = NLMSG_NEXT(r, len)) {
      if (r->nlmsg_seq != seq_) continue;
      if (r->nlmsg_type == RTM_NEWLINK) {
        return static_cast<const ifinfomsg*>(NLMSG_DATA(r))->ifi_index;
      }
      if (r->nlmsg_type == NLMSG_ERROR) {
        int err = -static_cast<const nlmsgerr*>(NLMSG_DATA(r))->error;
        if (err == ENODEV) return Error::NotFound(fmt::format("no network link {}", name));
        return Error::FromErrno(fmt::format("look up network link {}", name), err);
      }
    }
  }
}

Status Rtnl::Dump(NlMessage& msg, const char* what,
                  const std::function<void(const nlmsghdr*)>& each) {
  msg.header()->nlmsg_seq = ++seq_;
  if (send(fd_.get(), msg.bytes().data(), msg.bytes().size(), 0) < 0) {
    return Error::Errno(fmt::format("send({})", what));
  }
  for (;;) {
    std::vector<uint8_t> buf = STASIS_TRY(Receive());
    int len = static_cast<int>(buf.size());
    for (nlmsghdr* r = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(r, len);
         r = NLMSG_NEXT(r, len)) {
      if (r->nlmsg_seq != seq_) continue;
      if (r->nlmsg_type == NLMSG_DONE) return Ok();
      if (r->nlmsg_type == NLMSG_ERROR) {
        return Error::FromErrno(what, -static_cast<const nlmsgerr*>(NLMSG_DATA(r))->error);
      }
      each(r);
    }
  }
}

Result<std::vector<std::pair<uint32_t, int>>> Rtnl::Addresses4(int ifindex) {
  NlMessage m(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP);
  ifaddrmsg ifa = {};
  ifa.ifa_family = AF_INET;
  m.Fixed(&ifa, sizeof(ifa));
  std::vector<std::pair<uint32_t, int>> out;
  STASIS_TRY(Dump(m, "RTM_GETADDR", [&](const nlmsghdr* r) {
    if (r->nlmsg_type != RTM_NEWADDR) return;
    const ifaddrmsg* a = static_cast<const ifaddrmsg*>(NLMSG_DATA(r));
    if (static_cast<int>(a->ifa_index) != ifindex) return;
    int alen = static_cast<int>(IFA_PAYLOAD(r));
    for (const rtattr* at = IFA_RTA(a); RTA_OK(at, alen); at = RTA_NEXT(at, alen)) {
      if (at->rta_type == IFA_LOCAL && RTA_PAYLOAD(at) == 4) {
        uint32_t v;
        std::memcpy(&v, RTA_DATA(at), 4);
        out.emplace_back(v, a->ifa_prefixlen);
      }
    }
  }));
  return out;
}

std::string FormatNeighbour(const Neighbour& n) {
  char addr[INET6_ADDRSTRLEN] = "?";
  if ((n.family == AF_INET && n.dst.size() == 4) || (n.family == AF_INET6 && n.dst.size() == 16)) {
    inet_ntop(n.family, n.dst.data(), addr, sizeof(addr));
  }
  std::string ll;
  for (uint8_t b : n.lladdr) ll += fmt::format("{}{:02x}", ll.empty() ? "" : ":", b);
  return fmt::format("{} lladdr {}", addr, ll.empty() ? "none" : ll);
}

NlMessage BuildNewNeigh(int ifindex, const Neighbour& n) {
  NlMessage m(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE);
  ndmsg nd = {};
  nd.ndm_family = n.family;
  nd.ndm_ifindex = ifindex;
  nd.ndm_state = n.state;
  nd.ndm_flags = n.flags;
  nd.ndm_type = RTN_UNICAST;
  m.Fixed(&nd, sizeof(nd));
  m.Attr(NDA_DST, n.dst.data(), n.dst.size());
  if (!n.lladdr.empty()) m.Attr(NDA_LLADDR, n.lladdr.data(), n.lladdr.size());
  return m;
}

NlMessage BuildGetNeigh() {
  NlMessage m(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP);
  ndmsg nd = {};
  nd.ndm_family = AF_UNSPEC;  // every table: ARP and NDP
  m.Fixed(&nd, sizeof(nd));
  return m;
}

std::optional<Neighbour> ParseNeighbour(const nlmsghdr* msg, int ifindex) {
  if (msg->nlmsg_type != RTM_NEWNEIGH || msg->nlmsg_len < NLMSG_LENGTH(sizeof(ndmsg))) {
    return std::nullopt;
  }
  const ndmsg* nd = static_cast<const ndmsg*>(NLMSG_DATA(msg));
  if (nd->ndm_ifindex != ifindex || (nd->ndm_family != AF_INET && nd->ndm_family != AF_INET6)) {
    return std::nullopt;
  }
  Neighbour n;
  n.family = nd->ndm_family;
  n.state = nd->ndm_state;
  n.flags = nd->ndm_flags;
  // The attributes follow the ndmsg (uapi has no NDA_RTA).
  int len = static_cast<int>(msg->nlmsg_len - NLMSG_LENGTH(NLMSG_ALIGN(sizeof(ndmsg))));
  const rtattr* first = reinterpret_cast<const rtattr*>(reinterpret_cast<const uint8_t*>(nd) +
                                                        NLMSG_ALIGN(sizeof(ndmsg)));
  for (const rtattr* at = first; RTA_OK(at, len); at = RTA_NEXT(at, len)) {
    const uint8_t* p = static_cast<const uint8_t*>(RTA_DATA(at));
    if (at->rta_type == NDA_DST) n.dst.assign(p, p + RTA_PAYLOAD(at));
    if (at->rta_type == NDA_LLADDR) n.lladdr.assign(p, p + RTA_PAYLOAD(at));
  }
  if (n.dst.size() != (n.family == AF_INET ? 4u : 16u)) return std::nullopt;
  return n;
}

Result<std::vector<Neighbour>> Rtnl::Neighbours(int ifindex) {
  NlMessage m = BuildGetNeigh();
  std::vector<Neighbour> out;
  STASIS_TRY(Dump(m, "RTM_GETNEIGH", [&](const nlmsghdr* r) {
    if (std::optional<Neighbour> n = ParseNeighbour(r, ifindex)) out.push_back(std::move(*n));
  }));
  return out;
}

}  // namespace stasis::sys
