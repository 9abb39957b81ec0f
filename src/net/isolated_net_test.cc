#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>

#include <cstring>
#include <string>
#include <vector>

#include "net/isolated_net.h"
#include "sys/rtnl.h"

namespace stasis::net {
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
  sys::VethSpec spec = {"st0a530002", {2, 0x48, 10, 83, 0, 2}, 7,
                        "eth0",       {2, 0x53, 10, 83, 0, 2}, 9};
  sys::NlMessage m = sys::BuildNewVeth(spec);
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
  sys::NlMessage m = sys::BuildNewAddr4(3, addr, 24);
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
  sys::NlMessage m = sys::BuildSetUp(5, false);
  ifinfomsg ifi;
  std::memcpy(&ifi, m.bytes().data() + NLMSG_HDRLEN, sizeof(ifi));
  EXPECT_EQ(ifi.ifi_index, 5);
  EXPECT_EQ(ifi.ifi_flags, 0u);
  EXPECT_EQ(ifi.ifi_change, static_cast<unsigned>(IFF_UP));
}

TEST(IsolatedNet, PlanDerivesNamesAndMacsFromTheAddress) {
  Result<NetConfig> c = PlanNet("198.18.5.2/24", "sttest0", {});
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  EXPECT_EQ(FormatCidr(c->address, c->prefix), "198.18.5.2/24");
  EXPECT_EQ(c->bridge, "sttest0");
  EXPECT_EQ(c->host_link, "stc6120502");
  EXPECT_EQ(FormatMac(c->mac), "02:53:c6:12:05:02");
  EXPECT_EQ(FormatMac(c->host_mac), "02:48:c6:12:05:02");
  EXPECT_EQ(c->gateway, 0u);
}

TEST(IsolatedNet, PlanPicksTheLowestFreeDefaultAddress) {
  Result<NetConfig> c = PlanNet("", "", {inet_addr("10.83.0.2"), inet_addr("10.83.0.3")});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(FormatCidr(c->address, c->prefix), "10.83.0.4/16");
  EXPECT_EQ(c->bridge, kDefaultBridge);
}

TEST(IsolatedNet, BadAddressesAreRefused) {
  for (const char* bad : {"198.18.5.2", "198.18.5.0/24", "198.18.5.255/24", "198.18.5.2/31",
                          "198.18.5.2/0", "nope/24", "198.18.5.2/24x"}) {
    EXPECT_FALSE(PlanNet(bad, "", {}).ok()) << bad;
  }
  EXPECT_FALSE(PlanNet("198.18.5.2/24", "a-bridge-name-too-long", {}).ok());
}

TEST(IsolatedNet, MacRoundTrips) {
  Result<sys::Mac> m = ParseMac("02:53:c6:12:05:02");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(FormatMac(*m), "02:53:c6:12:05:02");
  EXPECT_FALSE(ParseMac("02:53:c6:12:05").ok());
  EXPECT_FALSE(ParseMac("02:53:c6:12:05:02:01").ok());
  EXPECT_FALSE(ParseMac("02:53:c6:12:05:1ff").ok());
}

}  // namespace
}  // namespace stasis::net
