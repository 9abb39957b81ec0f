#include "net/tcp_nudge.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/ip_icmp.h>

#include <cstring>

#include "net/sockaddr_testing.h"

namespace stasis::net {
namespace {

using sockaddr_testing::V4;
using sockaddr_testing::V6;

// The ones' complement sum over a valid ICMP message is 0xffff.
uint16_t Sum(const std::string& m) {
  uint32_t sum = 0;
  for (size_t i = 0; i + 1 < m.size(); i += 2) {
    sum += static_cast<uint32_t>(static_cast<uint8_t>(m[i]) << 8 | static_cast<uint8_t>(m[i + 1]));
  }
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

TEST(TcpNudge, Ipv4QuotesTheSegmentFromThePeer) {
  bool v6 = true;
  std::string to;
  std::string m =
      NudgeMessage(V4("198.18.0.2", 8888), V4("198.18.0.9", 40000), 0x01020304, &v6, &to).value();
  EXPECT_FALSE(v6);
  ASSERT_EQ(m.size(), 8u + 20 + 8);
  EXPECT_EQ(static_cast<uint8_t>(m[0]), ICMP_DEST_UNREACH);
  EXPECT_EQ(static_cast<uint8_t>(m[1]), ICMP_HOST_UNREACH);
  EXPECT_EQ(Sum(m), 0xffff);
  iphdr ip;
  std::memcpy(&ip, m.data() + 8, sizeof(ip));
  char src[INET_ADDRSTRLEN], dst[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &ip.saddr, src, sizeof(src));
  inet_ntop(AF_INET, &ip.daddr, dst, sizeof(dst));
  EXPECT_STREQ(src, "198.18.0.9");  // the peer sent it
  EXPECT_STREQ(dst, "198.18.0.2");
  EXPECT_EQ(ip.protocol, IPPROTO_TCP);
  uint16_t ports[2];
  uint32_t seq;
  std::memcpy(ports, m.data() + 28, 4);
  std::memcpy(&seq, m.data() + 32, 4);
  EXPECT_EQ(ntohs(ports[0]), 40000);
  EXPECT_EQ(ntohs(ports[1]), 8888);
  EXPECT_EQ(ntohl(seq), 0x01020304u);
  sockaddr_in dest;
  std::memcpy(&dest, to.data(), sizeof(dest));
  EXPECT_EQ(dest.sin_addr.s_addr, ip.saddr);
}

TEST(TcpNudge, Ipv6AndV4Mapped) {
  bool v6 = false;
  std::string to;
  std::string m = NudgeMessage(V6("2001:db8::1", 80), V6("2001:db8::2", 5000), 7, &v6, &to).value();
  EXPECT_TRUE(v6);
  ASSERT_EQ(m.size(), 8u + 40 + 8);
  EXPECT_EQ(static_cast<uint8_t>(m[0]), ICMP6_DST_UNREACH);
  EXPECT_EQ(static_cast<uint8_t>(m[1]), ICMP6_DST_UNREACH_NOROUTE);
  ip6_hdr ip;
  std::memcpy(&ip, m.data() + 8, sizeof(ip));
  char src[INET6_ADDRSTRLEN];
  inet_ntop(AF_INET6, &ip.ip6_src, src, sizeof(src));
  EXPECT_STREQ(src, "2001:db8::2");
  EXPECT_EQ(ip.ip6_nxt, IPPROTO_TCP);

  m = NudgeMessage(V6("::ffff:127.0.0.1", 80), V6("::ffff:127.0.0.2", 5000), 7, &v6, &to).value();
  EXPECT_FALSE(v6);
  EXPECT_EQ(Sum(m), 0xffff);
  EXPECT_FALSE(NudgeMessage(V4("127.0.0.1", 1), V6("::1", 2), 7, &v6, &to).ok());
}

}  // namespace
}  // namespace stasis::net
