// The neighbour-cache requests and answers of sys/rtnl.h, and what an
// isolated session carries of its cache (net/isolated_net.h).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/neighbour.h>
#include <linux/rtnetlink.h>

#include <cstring>
#include <vector>

#include "net/isolated_net.h"
#include "net/session_image.h"
#include "sys/rtnl.h"

namespace stasis::net {
namespace {

sys::Neighbour V4(const char* addr, uint16_t state) {
  sys::Neighbour n;
  n.family = AF_INET;
  n.dst.resize(4);
  inet_pton(AF_INET, addr, n.dst.data());
  n.lladdr = {0x02, 0x53, 0xc6, 0x13, 0x07, 0x03};
  n.state = state;
  return n;
}

sys::Neighbour V6(const char* addr, uint16_t state, uint8_t flags) {
  sys::Neighbour n;
  n.family = AF_INET6;
  n.dst.resize(16);
  inet_pton(AF_INET6, addr, n.dst.data());
  n.lladdr = {0x02, 0x42, 0x01, 0x02, 0x03, 0x04};
  n.state = state;
  n.flags = flags;
  return n;
}

const nlmsghdr* Header(const sys::NlMessage& m) {
  return reinterpret_cast<const nlmsghdr*>(m.bytes().data());
}

TEST(Neighbour, AddRequestReplacesWithStateFlagsAndAddresses) {
  sys::Neighbour n = V4("198.18.7.3", NUD_STALE);
  sys::NlMessage m = sys::BuildNewNeigh(4, n);
  const nlmsghdr* h = Header(m);
  ASSERT_EQ(h->nlmsg_len, m.bytes().size());
  EXPECT_EQ(h->nlmsg_type, RTM_NEWNEIGH);
  EXPECT_EQ(h->nlmsg_flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE);
  ndmsg nd;
  std::memcpy(&nd, m.bytes().data() + NLMSG_HDRLEN, sizeof(nd));
  EXPECT_EQ(nd.ndm_family, AF_INET);
  EXPECT_EQ(nd.ndm_ifindex, 4);
  EXPECT_EQ(nd.ndm_state, NUD_STALE);
  EXPECT_EQ(nd.ndm_type, RTN_UNICAST);
  // The request carries what the kernel's answers carry: it parses back.
  sys::NlMessage answer = sys::BuildNewNeigh(4, n);
  answer.header()->nlmsg_flags = NLM_F_MULTI;
  std::optional<sys::Neighbour> back = sys::ParseNeighbour(Header(answer), 4);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, n);
}

TEST(Neighbour, DumpAnswersOfOtherLinksAndFamiliesAreSkipped) {
  sys::Neighbour v6 = V6("fe80::42:1ff:fe02:304", NUD_REACHABLE, NTF_ROUTER);
  sys::NlMessage m = sys::BuildNewNeigh(2, v6);
  // The kernel adds more than the request has; those are ignored.
  nda_cacheinfo ci = {1, 2, 3, 4};
  m.Attr(NDA_CACHEINFO, &ci, sizeof(ci));
  m.AttrU32(NDA_PROBES, 1);
  std::optional<sys::Neighbour> back = sys::ParseNeighbour(Header(m), 2);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, v6);
  EXPECT_FALSE(sys::ParseNeighbour(Header(m), 1).has_value());  // lo's, say

  sys::Neighbour bridge_fdb = V4("198.18.7.3", NUD_REACHABLE);
  bridge_fdb.family = AF_BRIDGE;
  EXPECT_FALSE(sys::ParseNeighbour(Header(sys::BuildNewNeigh(2, bridge_fdb)), 2).has_value());
  sys::NlMessage done(NLMSG_DONE, NLM_F_MULTI);
  EXPECT_FALSE(sys::ParseNeighbour(done.header(), 2).has_value());
  sys::Neighbour short_dst = V4("198.18.7.3", NUD_REACHABLE);
  short_dst.dst.pop_back();
  EXPECT_FALSE(sys::ParseNeighbour(Header(sys::BuildNewNeigh(2, short_dst)), 2).has_value());
}

TEST(Neighbour, AnEntryWithoutLinkLayerAddressParsesWithoutOne) {
  sys::Neighbour pending = V4("198.18.7.9", NUD_INCOMPLETE);
  pending.lladdr.clear();
  sys::NlMessage m = sys::BuildNewNeigh(2, pending);
  std::optional<sys::Neighbour> back = sys::ParseNeighbour(Header(m), 2);
  ASSERT_TRUE(back.has_value());
  EXPECT_TRUE(back->lladdr.empty());
  EXPECT_FALSE(CarriedNeighbour(*back));
  EXPECT_EQ(sys::FormatNeighbour(*back), "198.18.7.9 lladdr none");
}

TEST(Neighbour, DumpRequestAsksEveryFamily) {
  sys::NlMessage m = sys::BuildGetNeigh();
  const nlmsghdr* h = Header(m);
  EXPECT_EQ(h->nlmsg_type, RTM_GETNEIGH);
  EXPECT_EQ(h->nlmsg_flags, NLM_F_REQUEST | NLM_F_DUMP);
  ndmsg nd;
  std::memcpy(&nd, m.bytes().data() + NLMSG_HDRLEN, sizeof(nd));
  EXPECT_EQ(nd.ndm_family, AF_UNSPEC);
  EXPECT_EQ(nd.ndm_flags, 0);  // not the proxy table
}

TEST(Neighbour, OnlyResolvedEntriesAreCarried) {
  for (uint16_t s : {NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE, NUD_PERMANENT}) {
    EXPECT_TRUE(CarriedNeighbour(V4("198.18.7.3", s))) << s;
  }
  for (uint16_t s : {NUD_NONE, NUD_INCOMPLETE, NUD_FAILED, NUD_NOARP}) {
    EXPECT_FALSE(CarriedNeighbour(V4("198.18.7.3", s))) << s;
  }
}

TEST(Neighbour, RestoredEntriesAreStaleUnlessPermanent) {
  for (uint16_t s : {NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE}) {
    EXPECT_EQ(RestoredNeighbour(V4("198.18.7.3", s)).state, NUD_STALE) << s;
  }
  EXPECT_EQ(RestoredNeighbour(V4("198.18.7.3", NUD_PERMANENT)).state, NUD_PERMANENT);
  sys::Neighbour router = V6("fe80::1", NUD_REACHABLE, NTF_ROUTER | NTF_EXT_LEARNED);
  sys::Neighbour r = RestoredNeighbour(router);
  EXPECT_EQ(r.flags, NTF_ROUTER);
  EXPECT_EQ(r.dst, router.dst);
  EXPECT_EQ(r.lladdr, router.lladdr);
  EXPECT_EQ(sys::FormatNeighbour(r), "fe80::1 lladdr 02:42:01:02:03:04");
}

TEST(Neighbour, ImageRecordRoundTripsAndRefusesDamage) {
  std::vector<sys::Neighbour> cache = {V4("198.18.7.1", NUD_PERMANENT), V4("198.18.7.3", NUD_STALE),
                                       V6("fe80::1", NUD_DELAY, NTF_ROUTER)};
  image::SessionNet proto;
  EXPECT_TRUE(NeighboursFromProto(proto)->empty());  // an older image: none
  NeighboursToProto(cache, &proto);
  Result<std::vector<sys::Neighbour>> back = NeighboursFromProto(proto);
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(*back, cache);

  image::SessionNet bad = proto;
  bad.mutable_neighbours(1)->set_address("\xc6\x12\x07");
  EXPECT_EQ(NeighboursFromProto(bad).error().code(), ErrorCode::kCorrupt);
  bad = proto;
  bad.mutable_neighbours(2)->set_family(AF_INET);  // 16 bytes of address
  EXPECT_FALSE(NeighboursFromProto(bad).ok());
  bad = proto;
  bad.mutable_neighbours(0)->set_state(NUD_INCOMPLETE);
  EXPECT_FALSE(NeighboursFromProto(bad).ok());
  bad = proto;
  bad.mutable_neighbours(0)->set_lladdr("");
  EXPECT_FALSE(NeighboursFromProto(bad).ok());
  bad = proto;
  bad.mutable_neighbours(0)->set_lladdr(std::string(33, 'x'));
  EXPECT_FALSE(NeighboursFromProto(bad).ok());
}

}  // namespace
}  // namespace stasis::net
