#include <gtest/gtest.h>

#include "image/session_net.h"
#include "session/json.h"
#include "sys/isolated_net.h"

namespace stasis::session {
namespace {

sys::NetConfig Planned() {
  Result<sys::NetConfig> net = sys::PlanNet("198.18.7.9/24", "sttest0", {});
  EXPECT_TRUE(net.ok());
  net->gateway = sys::ParseIp4("198.18.7.1").value();
  return *net;
}

void ExpectSame(const sys::NetConfig& a, const sys::NetConfig& b) {
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
  image::NetToProto(Planned(), &proto);
  Result<sys::NetConfig> back = image::NetFromProto(proto);
  ASSERT_TRUE(back.ok());
  ExpectSame(*back, Planned());
  proto.set_mac("\x02\x53");
  EXPECT_EQ(image::NetFromProto(proto).error().code(), ErrorCode::kCorrupt);
  image::NetToProto(Planned(), &proto);
  proto.set_host_link("a-name-longer-than-ifnamsiz");
  EXPECT_FALSE(image::NetFromProto(proto).ok());
}

}  // namespace
}  // namespace stasis::session
