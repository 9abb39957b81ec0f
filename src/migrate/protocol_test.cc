#include "migrate/protocol.h"

#include <gtest/gtest.h>

#include "migrate/hello.h"

namespace stasis::migrate {
namespace {

std::string Encode(const std::function<void(FrameWriter&)>& write) {
  image::StringSink sink;
  FrameWriter w(sink);
  write(w);
  EXPECT_TRUE(w.Flush().ok());
  return sink.data();
}

TEST(Frames, RoundTrip) {
  Hello h;
  h.set_version(kProtocolVersion);
  h.set_session_name("web");
  std::string page(image::kPageSize, 'x');
  std::string bytes = Encode([&](FrameWriter& w) {
    ASSERT_TRUE(w.Send(Msg::kHello, h).ok());
    ASSERT_TRUE(w.SendPages(7, 0x1000, 1, reinterpret_cast<const uint8_t*>(page.data())).ok());
    ASSERT_TRUE(w.Send(Msg::kCommit).ok());
  });
  image::MemorySource src(bytes);
  FrameReader r(src, "peer");
  Hello got = r.ExpectMessage<Hello>(Msg::kHello, "test").value();
  EXPECT_EQ(got.session_name(), "web");
  Frame pages = r.Next().value();
  EXPECT_EQ(pages.type, Msg::kPages);
  EXPECT_EQ(pages.payload.size(), image::kPageRunHeaderSize + image::kPageSize);
  EXPECT_EQ(r.Next().value().type, Msg::kCommit);
  Result<Frame> end = r.Next();
  ASSERT_FALSE(end.ok());
  EXPECT_NE(end.error().message().find("peer closed the connection"), std::string::npos);
}

TEST(Frames, CorruptedByteIsNamed) {
  std::string bytes =
      Encode([](FrameWriter& w) { ASSERT_TRUE(w.Send(Msg::kCommit, "abc", 3).ok()); });
  bytes[bytes.size() - 1] ^= 1;
  image::MemorySource src(bytes);
  FrameReader r(src, "peer");
  Result<Frame> f = r.Next();
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(f.error().message().find("fails its checksum"), std::string::npos)
      << f.error().message();
}

TEST(Frames, TruncatedInsideAFrameIsNamed) {
  std::string bytes =
      Encode([](FrameWriter& w) { ASSERT_TRUE(w.Send(Msg::kImage, "abcdef", 6).ok()); });
  bytes.resize(bytes.size() - 2);
  image::MemorySource src(bytes);
  FrameReader r(src, "peer");
  Result<Frame> f = r.Next();
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(f.error().message().find("ends inside a frame"), std::string::npos);
}

TEST(Frames, UnknownTypeIsRefused) {
  std::string bytes(image::kFrameHeaderSize, '\0');
  bytes[0] = 99;
  image::MemorySource src(bytes);
  FrameReader r(src, "peer");
  Result<Frame> f = r.Next();
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.error().message().find("damaged frame"), std::string::npos);
}

TEST(Frames, RefuseBecomesThePeersError) {
  Refuse no;
  no.set_reason("no room");
  std::string bytes = Encode([&](FrameWriter& w) { ASSERT_TRUE(w.Send(Msg::kRefuse, no).ok()); });
  image::MemorySource src(bytes);
  FrameReader r(src, "peer");
  Result<Frame> f = r.Expect(Msg::kAccept, "hello");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().message(), "peer refused: no room");
}

HostFacts Here() {
  HostFacts h;
  h.xfeatures = 0x2e7;
  h.vdso = "vvar +0x0:0x4000 vdso +0x4000:0x2000 xxh3 1234";
  h.kernel_release = "6.18";
  return h;
}

Hello SameHost() {
  Hello h;
  h.set_version(kProtocolVersion);
  h.set_xfeatures(0x2e7);
  h.set_vdso(Here().vdso);
  return h;
}

TEST(CheckHello, SameHostIsAccepted) { EXPECT_TRUE(CheckHello(SameHost(), Here()).ok()); }

TEST(CheckHello, VersionMismatchIsRefused) {
  Hello h = SameHost();
  h.set_version(kProtocolVersion + 1);
  Status s = CheckHello(h, Here());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("protocol"), std::string::npos);
}

TEST(CheckHello, MissingXsaveFeatureIsRefused) {
  Hello h = SameHost();
  h.set_xfeatures(0x2e7 | 0x60000);  // AMX tiles, which this "CPU" lacks
  Status s = CheckHello(h, Here());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("0x60000"), std::string::npos) << s.error().message();
}

TEST(CheckHello, FewerXsaveFeaturesAreFine) {
  Hello h = SameHost();
  h.set_xfeatures(0x7);
  EXPECT_TRUE(CheckHello(h, Here()).ok());
}

TEST(CheckHello, OtherVdsoIsRefused) {
  Hello h = SameHost();
  h.set_vdso("vvar +0x0:0x4000 vdso +0x4000:0x2000 xxh3 9999");
  h.set_kernel_release("6.1");
  Status s = CheckHello(h, Here());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("vdso"), std::string::npos);
}

TEST(CheckHello, ThisHostMatchesItself) {
  HostFacts here = ThisHost().value();
  Hello h;
  h.set_version(kProtocolVersion);
  h.set_xfeatures(here.xfeatures);
  h.set_vdso(here.vdso);
  EXPECT_TRUE(CheckHello(h, here).ok());
}

}  // namespace
}  // namespace stasis::migrate
