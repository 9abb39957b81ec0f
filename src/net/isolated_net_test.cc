// Planning an isolated session's network (net/isolated_net.h); the
// rtnetlink requests it makes are tested in sys/rtnl_test.cc.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <string>

#include "net/isolated_net.h"

namespace stasis::net {
namespace {

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
