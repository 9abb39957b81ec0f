#include "sys/netlock.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include "sys/sockaddr_testing.h"

namespace stasis::sys {
namespace {

using sockaddr_testing::V4;
using sockaddr_testing::V6;

TEST(NetLock, DropsBothDirectionsOfTheFlow) {
  std::string r = LockRuleset("t", V4("198.18.0.2", 8888), V4("198.18.0.9", 40000)).value();
  EXPECT_NE(r.find("ip saddr 198.18.0.9 ip daddr 198.18.0.2 tcp sport 40000 tcp dport 8888 drop"),
            std::string::npos)
      << r;
  EXPECT_NE(r.find("ip saddr 198.18.0.2 ip daddr 198.18.0.9 tcp sport 8888 tcp dport 40000 drop"),
            std::string::npos)
      << r;
  EXPECT_NE(r.find("hook input priority raw"), std::string::npos);
  EXPECT_NE(r.find("hook output priority raw"), std::string::npos);
}

TEST(NetLock, V4MappedAddressesMatchAsIpv4) {
  std::string r = LockRuleset("t", V6("::ffff:127.0.0.1", 1), V6("::ffff:127.0.0.2", 2)).value();
  EXPECT_NE(r.find("ip saddr 127.0.0.2 ip daddr 127.0.0.1"), std::string::npos) << r;
  r = LockRuleset("t", V6("::1", 1), V6("::1", 2)).value();
  EXPECT_NE(r.find("ip6 saddr ::1 ip6 daddr ::1 tcp sport 2 tcp dport 1 drop"), std::string::npos)
      << r;
}

TEST(NetLock, RefusesOtherFamilies) { EXPECT_FALSE(LockRuleset("t", "", V4("127.0.0.1", 1)).ok()); }

}  // namespace
}  // namespace stasis::sys
