#include <gtest/gtest.h>

#include "net/isolated_net.h"
#include "net/session_image.h"
#include "session/json.h"

namespace stasis::session {
namespace {

net::NetConfig Planned() {
  Result<net::NetConfig> net = net::PlanNet("198.18.7.9/24", "sttest0", {});
  EXPECT_TRUE(net.ok());
  net->gateway = net::ParseIp4("198.18.7.1").value();
  return *net;
}

void ExpectSame(const net::NetConfig& a, const net::NetConfig& b) {
  EXPECT_EQ(a.address, b.address);
  EXPECT_EQ(a.prefix, b.prefix);
  EXPECT_EQ(a.gateway, b.gateway);
  EXPECT_EQ(a.bridge, b.bridge);
  EXPECT_EQ(a.mac, b.mac);
  EXPECT_EQ(a.host_mac, b.host_mac);
  EXPECT_EQ(a.host_link, b.host_link);
}

TEST(SessionNet, MetadataKeepsTheNetwork) {
  SessionInfo info;
  info.name = "web";
  info.init_pid = 10;
  info.root_pid = 11;
  info.net = Planned();
  Result<SessionInfo> back = SessionFromJson(SessionToJson(info), "web.json");
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  ASSERT_TRUE(back->net.has_value());
  ExpectSame(*back->net, *info.net);
  info.net.reset();
  back = SessionFromJson(SessionToJson(info), "web.json");
  ASSERT_TRUE(back.ok());
  EXPECT_FALSE(back->net.has_value());
}

TEST(SessionNet, BadNetworkInMetadataIsCorrupt) {
  const char* text = R"({"version": 1, "name": "x", "init_pid": 1, "root_pid": 2, "cgroup": "",)"
                     R"( "net": {"address": "300.1.2.3/24", "mac": "02:00:00:00:00:01",)"
                     R"( "host_mac": "02:00:00:00:00:02", "bridge": "b", "host_link": "l"}})";
  EXPECT_FALSE(SessionFromJson(text, "x.json").ok());
}

TEST(SessionNet, ImageRecordRoundTripsAndRefusesDamage) {
  image::SessionNet proto;
  net::NetToProto(Planned(), &proto);
  Result<net::NetConfig> back = net::NetFromProto(proto);
  ASSERT_TRUE(back.ok());
  ExpectSame(*back, Planned());
  proto.set_mac("\x02\x53");
  EXPECT_EQ(net::NetFromProto(proto).error().code(), ErrorCode::kCorrupt);
  net::NetToProto(Planned(), &proto);
  proto.set_host_link("a-name-longer-than-ifnamsiz");
  EXPECT_FALSE(net::NetFromProto(proto).ok());
}

}  // namespace
}  // namespace stasis::session
