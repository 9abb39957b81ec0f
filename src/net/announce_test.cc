// The announce (announce.cc): gratuitous ARPs sent from a link in another
// namespace, captured at the other end of its veth pair, in a namespace of
// the test's own.
#include "net/announce.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <netinet/if_ether.h>
#include <netpacket/packet.h>
#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <vector>

#include "sys/netns.h"
#include "sys/rtnl.h"

namespace stasis::net {
namespace {

constexpr sys::Mac kSessionMac = {0x02, 0x53, 0xc6, 0x12, 0x40, 0x07};

uint32_t Ip4(const char* text) {
  in_addr a = {};
  EXPECT_EQ(inet_pton(AF_INET, text, &a), 1);
  return a.s_addr;
}

// A namespace holding a veth pair, eth0 (the session's) and cap0 (where the
// test listens), both up; the namespace goes with the object.
struct TestLink {
  sys::UniqueFd netns;
  sys::UniqueFd capture;  // AF_PACKET, ARP only, bound to cap0

  static TestLink Make() {
    TestLink t;
    Result<sys::UniqueFd> ns = sys::CreateNetns();
    EXPECT_TRUE(ns.ok()) << ns.error().ToString();
    if (!ns.ok()) return t;
    t.netns = std::move(*ns);
    Result<sys::ScopedNetns> inside = sys::ScopedNetns::Enter(t.netns.get());
    EXPECT_TRUE(inside.ok()) << inside.error().ToString();
    if (!inside.ok()) return t;
    Status made = Build(&t);
    EXPECT_TRUE(made.ok()) << made.error().ToString();
    EXPECT_TRUE(inside->Leave().ok());
    return t;
  }

  static Status Build(TestLink* t) {
    sys::Rtnl rtnl = STASIS_TRY(sys::Rtnl::Open());
    sys::VethSpec veth = {"cap0", {0x02, 0x74, 0, 0, 0, 1}, 0, "eth0", kSessionMac, -1};
    sys::NlMessage create = sys::BuildNewVeth(veth);
    STASIS_TRY(rtnl.Request(create, "create veth"));
    for (const char* name : {"cap0", "eth0"}) {
      sys::NlMessage up = sys::BuildSetUp(STASIS_TRY(rtnl.IndexOf(name)), true);
      STASIS_TRY(rtnl.Request(up, std::string("bring up ") + name));
    }
    t->capture.reset(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ARP)));
    if (!t->capture.valid()) return Error::Errno("socket(AF_PACKET)");
    sockaddr_ll at = {};
    at.sll_family = AF_PACKET;
    at.sll_protocol = htons(ETH_P_ARP);
    at.sll_ifindex = STASIS_TRY(rtnl.IndexOf("cap0"));
    if (bind(t->capture.get(), reinterpret_cast<sockaddr*>(&at), sizeof(at)) < 0) {
      return Error::Errno("bind to cap0");
    }
    return Ok();
  }

  // The next ARP frame on cap0, or an empty vector after `timeout`.
  std::vector<uint8_t> Next(std::chrono::milliseconds timeout) {
    pollfd p = {capture.get(), POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(timeout.count())) != 1) return {};
    std::vector<uint8_t> frame(1514);
    ssize_t n = recv(capture.get(), frame.data(), frame.size(), 0);
    frame.resize(n < 0 ? 0 : static_cast<size_t>(n));
    return frame;
  }
};

TEST(Announce, FrameIsAGratuitousArpRequest) {
  ArpFrame f = GratuitousArp(Ip4("198.18.64.7"), kSessionMac);
  ether_header eth;
  std::memcpy(&eth, f.data(), sizeof(eth));
  EXPECT_EQ(std::vector<uint8_t>(eth.ether_dhost, eth.ether_dhost + 6),
            std::vector<uint8_t>(6, 0xff));
  EXPECT_EQ(std::memcmp(eth.ether_shost, kSessionMac.data(), 6), 0);
  EXPECT_EQ(ntohs(eth.ether_type), ETHERTYPE_ARP);
  ether_arp arp;
  std::memcpy(&arp, f.data() + sizeof(eth), sizeof(arp));
  EXPECT_EQ(ntohs(arp.arp_op), ARPOP_REQUEST);
  EXPECT_EQ(ntohs(arp.arp_pro), ETHERTYPE_IP);
  EXPECT_EQ(std::vector<uint8_t>(arp.arp_tha, arp.arp_tha + 6), std::vector<uint8_t>(6, 0));
}

TEST(Announce, SendsThreeFromTheLinksMac) {
  TestLink link = TestLink::Make();
  ASSERT_TRUE(link.capture.valid());
  uint32_t address = Ip4("198.18.64.7");
  Status sent = Announce(link.netns.get(), "eth0", address, 3);
  ASSERT_TRUE(sent.ok()) << sent.error().ToString();
  for (int i = 0; i < 3; ++i) {
    std::vector<uint8_t> frame = link.Next(std::chrono::milliseconds(2000));
    ASSERT_EQ(frame.size(), kArpFrameSize) << "frame " << i;
    ether_header eth;
    std::memcpy(&eth, frame.data(), sizeof(eth));
    EXPECT_EQ(std::memcmp(eth.ether_shost, kSessionMac.data(), 6), 0);
    EXPECT_EQ(std::vector<uint8_t>(eth.ether_dhost, eth.ether_dhost + 6),
              std::vector<uint8_t>(6, 0xff));
    ether_arp arp;
    std::memcpy(&arp, frame.data() + sizeof(eth), sizeof(arp));
    EXPECT_EQ(ntohs(arp.arp_op), ARPOP_REQUEST);
    EXPECT_EQ(std::memcmp(arp.arp_sha, kSessionMac.data(), 6), 0);
    EXPECT_EQ(std::memcmp(arp.arp_spa, &address, 4), 0);
    EXPECT_EQ(std::memcmp(arp.arp_tpa, &address, 4), 0);
  }
  EXPECT_TRUE(link.Next(std::chrono::milliseconds(100)).empty()) << "more than 3 sent";
  // The caller's thread is back in its own namespace.
  EXPECT_EQ(if_nametoindex("cap0"), 0u);
}

TEST(Announce, AMissingLinkIsAnErrorNamingIt) {
  TestLink link = TestLink::Make();
  ASSERT_TRUE(link.netns.valid());
  Status sent = Announce(link.netns.get(), "nosuch0", Ip4("198.18.64.7"));
  ASSERT_FALSE(sent.ok());
  EXPECT_NE(sent.error().ToString().find("announce 198.18.64.7 on nosuch0"), std::string::npos)
      << sent.error().ToString();
}

}  // namespace
}  // namespace stasis::net
