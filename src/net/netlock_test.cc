#include "net/netlock.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include "net/sockaddr_testing.h"

namespace stasis::net {
namespace {

using sockaddr_testing::V4;
using sockaddr_testing::V6;

bool Has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(NetLock, DropsBothDirectionsOfEveryFlow) {
  std::string r = LockRuleset("t", {{V4("198.18.0.2", 8888), V4("198.18.0.9", 40000)},
                                    {V4("198.18.0.2", 8888), V4("198.18.0.10", 40001)}})
                      .value();
  EXPECT_TRUE(Has(r,
                  "elements = { 198.18.0.2 . 8888 . 198.18.0.9 . 40000, "
                  "198.18.0.2 . 8888 . 198.18.0.10 . 40001 }"))
      << r;
  // The set's key is local first: incoming packets match it by destination.
  EXPECT_TRUE(Has(r, "ip daddr . tcp dport . ip saddr . tcp sport @flows4 drop")) << r;
  EXPECT_TRUE(Has(r, "ip saddr . tcp sport . ip daddr . tcp dport @flows4 drop")) << r;
  EXPECT_TRUE(Has(r, "hook input priority raw"));
  EXPECT_TRUE(Has(r, "hook output priority raw"));
  // No IPv6 flow: an empty set, declared without elements.
  EXPECT_TRUE(Has(r, "set flows6 { type ipv6_addr . inet_service . ipv6_addr . inet_service; }"))
      << r;
}

TEST(NetLock, V4MappedAddressesMatchAsIpv4) {
  std::string r =
      LockRuleset("t", {{V6("::ffff:127.0.0.1", 1), V6("::ffff:127.0.0.2", 2)}}).value();
  EXPECT_TRUE(Has(r, "elements = { 127.0.0.1 . 1 . 127.0.0.2 . 2 }")) << r;
  r = LockRuleset("t", {{V6("::1", 1), V6("::1", 2)}}).value();
  EXPECT_TRUE(Has(r,
                  "set flows6 { type ipv6_addr . inet_service . ipv6_addr . inet_service; "
                  "elements = { ::1 . 1 . ::1 . 2 }; }"))
      << r;
}

TEST(NetLock, AddsAFlowToItsFamilysSet) {
  EXPECT_EQ(AddFlowCommand("t", {V6("2001:db8::1", 80), V6("2001:db8::2", 9)}).value(),
            "add element inet t flows6 { 2001:db8::1 . 80 . 2001:db8::2 . 9 }\n");
}

TEST(NetLock, RefusesOtherFamilies) {
  EXPECT_FALSE(LockRuleset("t", {{"", V4("127.0.0.1", 1)}}).ok());
  EXPECT_FALSE(LockRuleset("t", {{V4("127.0.0.1", 1), V6("::1", 1)}}).ok());
}

}  // namespace
}  // namespace stasis::net
