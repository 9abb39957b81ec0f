// The rtnetlink requests sys/rtnl.h builds for an isolated session's links.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>

#include <cstring>
#include <string>
#include <vector>

#include "sys/rtnl.h"

namespace stasis::sys {
namespace {

// The attributes of a region: (type without flags, payload).
std::vector<std::pair<int, std::string>> Attrs(const uint8_t* p, size_t len) {
  std::vector<std::pair<int, std::string>> out;
  while (len >= NLA_HDRLEN) {
    nlattr a;
    std::memcpy(&a, p, sizeof(a));
    EXPECT_GE(a.nla_len, NLA_HDRLEN);
    EXPECT_LE(a.nla_len, len);
    out.emplace_back(
        a.nla_type & NLA_TYPE_MASK,
        std::string(reinterpret_cast<const char*>(p) + NLA_HDRLEN, a.nla_len - NLA_HDRLEN));
    size_t step = NLA_ALIGN(a.nla_len);
    if (step > len) break;
    p += step;
    len -= step;
  }
  return out;
}

std::string Find(const std::vector<std::pair<int, std::string>>& attrs, int type) {
  for (const auto& [t, v] : attrs) {
    if (t == type) return v;
  }
  ADD_FAILURE() << "no attribute " << type;
  return "";
}

TEST(Rtnl, VethRequestNestsThePeerWithItsOwnIfinfomsg) {
  VethSpec spec = {"st0a530002", {2, 0x48, 10, 83, 0, 2}, 7, "eth0", {2, 0x53, 10, 83, 0, 2}, 9};
  NlMessage m = BuildNewVeth(spec);
  const std::vector<uint8_t>& b = m.bytes();
  const nlmsghdr* h = reinterpret_cast<const nlmsghdr*>(b.data());
  ASSERT_EQ(h->nlmsg_len, b.size());
  EXPECT_EQ(h->nlmsg_type, RTM_NEWLINK);
  EXPECT_EQ(h->nlmsg_flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
  size_t fixed = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(ifinfomsg));
  auto top = Attrs(b.data() + fixed, b.size() - fixed);
  EXPECT_EQ(Find(top, IFLA_IFNAME), std::string("st0a530002", 11));
  EXPECT_EQ(Find(top, IFLA_ADDRESS), std::string("\x02\x48\x0a\x53\x00\x02", 6));
  uint32_t master;
  std::memcpy(&master, Find(top, IFLA_MASTER).data(), 4);
  EXPECT_EQ(master, 7u);
  std::string info = Find(top, IFLA_LINKINFO);
  auto info_attrs = Attrs(reinterpret_cast<const uint8_t*>(info.data()), info.size());
  EXPECT_EQ(Find(info_attrs, IFLA_INFO_KIND), std::string("veth", 5));
  std::string data = Find(info_attrs, IFLA_INFO_DATA);
  auto data_attrs = Attrs(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  std::string peer = Find(data_attrs, VETH_INFO_PEER);
  ASSERT_GE(peer.size(), sizeof(ifinfomsg));
  auto peer_attrs = Attrs(reinterpret_cast<const uint8_t*>(peer.data()) + sizeof(ifinfomsg),
                          peer.size() - sizeof(ifinfomsg));
  EXPECT_EQ(Find(peer_attrs, IFLA_IFNAME), std::string("eth0", 5));
  EXPECT_EQ(Find(peer_attrs, IFLA_ADDRESS), std::string("\x02\x53\x0a\x53\x00\x02", 6));
  uint32_t ns;
  std::memcpy(&ns, Find(peer_attrs, IFLA_NET_NS_FD).data(), 4);
  EXPECT_EQ(ns, 9u);
}

TEST(Rtnl, AddressRequestCarriesLocalAndBroadcast) {
  uint32_t addr = inet_addr("198.18.5.2");
  NlMessage m = BuildNewAddr4(3, addr, 24);
  const std::vector<uint8_t>& b = m.bytes();
  ifaddrmsg ifa;
  std::memcpy(&ifa, b.data() + NLMSG_HDRLEN, sizeof(ifa));
  EXPECT_EQ(ifa.ifa_prefixlen, 24);
  EXPECT_EQ(ifa.ifa_index, 3u);
  size_t fixed = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(ifaddrmsg));
  auto attrs = Attrs(b.data() + fixed, b.size() - fixed);
  uint32_t local, brd;
  std::memcpy(&local, Find(attrs, IFA_LOCAL).data(), 4);
  std::memcpy(&brd, Find(attrs, IFA_BROADCAST).data(), 4);
  EXPECT_EQ(local, addr);
  EXPECT_EQ(brd, inet_addr("198.18.5.255"));
}

TEST(Rtnl, SetUpChangesOnlyIffUp) {
  NlMessage m = BuildSetUp(5, false);
  ifinfomsg ifi;
  std::memcpy(&ifi, m.bytes().data() + NLMSG_HDRLEN, sizeof(ifi));
  EXPECT_EQ(ifi.ifi_index, 5);
  EXPECT_EQ(ifi.ifi_flags, 0u);
  EXPECT_EQ(ifi.ifi_change, static_cast<unsigned>(IFF_UP));
}

}  // namespace
}  // namespace stasis::sys
