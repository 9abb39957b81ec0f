#include "net/packet_keeper.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

#include "net/sockaddr_testing.h"
#include "sys/unique_fd.h"

namespace stasis::net {
namespace {

using sockaddr_testing::V4;
using sockaddr_testing::V6;

void Put16(std::string* p, size_t at, uint16_t v) {
  (*p)[at] = static_cast<char>(v >> 8);
  (*p)[at + 1] = static_cast<char>(v & 0xff);
}

// An IPv4 TCP packet with a 4-byte IP option (to move the TCP header).
std::string Tcp4(const char* src, int sport, const char* dst, int dport, const std::string& data) {
  std::string p(24 + 20, '\0');
  p[0] = 0x46;
  Put16(&p, 2, static_cast<uint16_t>(p.size() + data.size()));
  p[8] = 64;
  p[9] = IPPROTO_TCP;
  inet_pton(AF_INET, src, &p[12]);
  inet_pton(AF_INET, dst, &p[16]);
  Put16(&p, 24, static_cast<uint16_t>(sport));
  Put16(&p, 26, static_cast<uint16_t>(dport));
  p[24 + 12] = 5 << 4;
  p[24 + 13] = 0x18;
  return p + data;
}

std::string Tcp6(const char* src, int sport, const char* dst, int dport, const std::string& data) {
  std::string p(40 + 20, '\0');
  p[0] = 0x60;
  Put16(&p, 4, static_cast<uint16_t>(20 + data.size()));
  p[6] = IPPROTO_TCP;
  p[7] = 64;
  inet_pton(AF_INET6, src, &p[8]);
  inet_pton(AF_INET6, dst, &p[24]);
  Put16(&p, 40, static_cast<uint16_t>(sport));
  Put16(&p, 42, static_cast<uint16_t>(dport));
  p[40 + 12] = 5 << 4;
  return p + data;
}

// Runs the filter in the kernel: a datagram socket drops what it rejects.
bool Passes(const std::vector<sock_filter>& prog, const std::string& packet) {
  int sv[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
  sys::UniqueFd a(sv[0]), b(sv[1]);
  sock_fprog fprog = {static_cast<unsigned short>(prog.size()),
                      const_cast<sock_filter*>(prog.data())};
  EXPECT_EQ(setsockopt(b.get(), SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof(fprog)), 0);
  EXPECT_EQ(send(a.get(), packet.data(), packet.size(), 0), static_cast<ssize_t>(packet.size()));
  char buf[2048];
  ssize_t n = recv(b.get(), buf, sizeof(buf), MSG_DONTWAIT);
  if (n >= 0) {
    EXPECT_EQ(std::string(buf, static_cast<size_t>(n)), packet);
  }
  return n >= 0;
}

const std::vector<sys::TcpFlow> kFlows = {
    {V4("198.18.0.2", 8888), V4("198.18.0.9", 40000)},
    {V6("::ffff:127.0.0.1", 7000), V6("::ffff:127.0.0.5", 5555)},
    {V6("2001:db8::1", 443), V6("2001:db8::77", 61000)},
};

TEST(PacketKeeper, FilterTakesWhatThePeersSendAndNothingElse) {
  std::vector<sock_filter> prog = CaptureFilter(kFlows);
  EXPECT_TRUE(Passes(prog, Tcp4("198.18.0.9", 40000, "198.18.0.2", 8888, "data")));
  EXPECT_TRUE(Passes(prog, Tcp4("127.0.0.5", 5555, "127.0.0.1", 7000, "")));
  EXPECT_TRUE(Passes(prog, Tcp6("2001:db8::77", 61000, "2001:db8::1", 443, "x")));
  // The other direction, other ports, other addresses, other protocols.
  EXPECT_FALSE(Passes(prog, Tcp4("198.18.0.2", 8888, "198.18.0.9", 40000, "")));
  EXPECT_FALSE(Passes(prog, Tcp4("198.18.0.9", 40001, "198.18.0.2", 8888, "")));
  EXPECT_FALSE(Passes(prog, Tcp4("198.18.0.9", 40000, "198.18.0.3", 8888, "")));
  EXPECT_FALSE(Passes(prog, Tcp6("2001:db8::77", 61000, "2001:db8::2", 443, "")));
  EXPECT_FALSE(Passes(prog, Tcp6("2001:db8::1", 443, "2001:db8::77", 61000, "")));
  std::string udp = Tcp4("198.18.0.9", 40000, "198.18.0.2", 8888, "");
  udp[9] = IPPROTO_UDP;
  EXPECT_FALSE(Passes(prog, udp));
}

TEST(PacketKeeper, FilterWithTooManyFlowsTakesAllTcp) {
  std::vector<sys::TcpFlow> many;
  for (int i = 0; i < 300; i++)
    many.push_back({V6("2001:db8::1", 443), V6("2001:db8::2", 1000 + i)});
  std::vector<sock_filter> prog = CaptureFilter(many);
  EXPECT_LE(prog.size(), static_cast<size_t>(BPF_MAXINSNS));
  EXPECT_TRUE(Passes(prog, Tcp6("2001:db8::9", 1, "2001:db8::1", 2, "")));
  // The keeper checks each packet itself.
  EXPECT_TRUE(FromPeer(Tcp6("2001:db8::2", 1299, "2001:db8::1", 443, ""), many));
  EXPECT_FALSE(FromPeer(Tcp6("2001:db8::2", 1300, "2001:db8::1", 443, ""), many));
}

TEST(PacketKeeper, FromPeerMatchesTheWholeFlow) {
  EXPECT_TRUE(FromPeer(Tcp4("198.18.0.9", 40000, "198.18.0.2", 8888, "abc"), kFlows));
  EXPECT_FALSE(FromPeer(Tcp4("198.18.0.2", 8888, "198.18.0.9", 40000, "abc"), kFlows));
  EXPECT_FALSE(FromPeer("short", kFlows));
}

// The ones' complement sum of the pseudo-header and segment, checksum
// included, is 0xffff when the checksum is right.
uint16_t Verify(const std::string& p, bool v4) {
  auto sum16 = [](const std::string& s, size_t from, size_t len, uint32_t sum) {
    for (size_t i = 0; i + 1 < len; i += 2) {
      sum += static_cast<uint8_t>(s[from + i]) << 8 | static_cast<uint8_t>(s[from + i + 1]);
    }
    if (len % 2) sum += static_cast<uint8_t>(s[from + len - 1]) << 8;
    return sum;
  };
  size_t tcp = v4 ? static_cast<size_t>(p[0] & 0xf) * 4 : 40;
  uint32_t sum = v4 ? sum16(p, 12, 8, 0) : sum16(p, 8, 32, 0);
  sum += IPPROTO_TCP + static_cast<uint32_t>(p.size() - tcp);
  sum = sum16(p, tcp, p.size() - tcp, sum);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

TEST(PacketKeeper, FixesTheTcpChecksum) {
  std::string p4 = Tcp4("198.18.0.9", 40000, "198.18.0.2", 8888, "odd length");
  ASSERT_TRUE(FixTcpChecksum(&p4));
  EXPECT_EQ(Verify(p4, true), 0xffff);
  std::string p6 = Tcp6("2001:db8::77", 61000, "2001:db8::1", 443, "even");
  ASSERT_TRUE(FixTcpChecksum(&p6));
  EXPECT_EQ(Verify(p6, false), 0xffff);
  std::string cut = p4.substr(0, p4.size() - 1);
  EXPECT_FALSE(FixTcpChecksum(&cut));
}

TEST(PacketKeeper, LinkFilterTakesTcpToTheSessionAddress) {
  uint32_t session;
  inet_pton(AF_INET, "198.18.5.2", &session);
  std::vector<sock_filter> prog = LinkCaptureFilter(session);
  EXPECT_TRUE(Passes(prog, Tcp4("198.18.5.3", 40000, "198.18.5.2", 8888, "x")));
  EXPECT_TRUE(Passes(prog, Tcp4("203.0.113.1", 1, "198.18.5.2", 2, "")));  // any peer, any port
  EXPECT_FALSE(Passes(prog, Tcp4("198.18.5.2", 8888, "198.18.5.3", 40000, "")));
  std::string udp = Tcp4("198.18.5.3", 40000, "198.18.5.2", 8888, "");
  udp[9] = IPPROTO_UDP;
  EXPECT_FALSE(Passes(prog, udp));
  EXPECT_FALSE(Passes(prog, Tcp6("2001:db8::77", 61000, "2001:db8::1", 443, "")));
  EXPECT_TRUE(ToAddress(Tcp4("198.18.5.3", 40000, "198.18.5.2", 8888, ""), session));
  EXPECT_FALSE(ToAddress(udp, session));
}

uint32_t Seq(const std::string& p) {
  size_t t = static_cast<size_t>(p[0] & 0xf) * 4;
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v = v << 8 | static_cast<uint8_t>(p[t + 4 + i]);
  return v;
}

TEST(PacketKeeper, CutsABigPacketToTheMtu) {
  std::string data;
  for (int i = 0; i < 5000; i++) data += static_cast<char>('a' + i % 26);
  std::string big = Tcp4("198.18.5.3", 40000, "198.18.5.2", 8888, data);
  big[24 + 4] = 0x10;   // seq 0x10000000
  big[24 + 13] = 0x19;  // FIN PSH ACK
  std::vector<std::string> segs = SegmentTcp4(big, 1500);
  ASSERT_EQ(segs.size(), 4u);  // 1456 bytes each (24 + 20 bytes of headers)
  std::string joined;
  uint32_t seq = 0x10000000;
  for (size_t i = 0; i < segs.size(); i++) {
    std::string& s = segs[i];
    EXPECT_LE(s.size(), 1500u);
    EXPECT_EQ(static_cast<size_t>(static_cast<uint8_t>(s[2]) << 8 | static_cast<uint8_t>(s[3])),
              s.size());
    EXPECT_EQ(Seq(s), seq);
    bool last = i + 1 == segs.size();
    EXPECT_EQ(static_cast<uint8_t>(s[24 + 13]), last ? 0x19 : 0x10);
    // The IP header's checksum is right: its sum folds to 0xffff.
    uint32_t sum = 0;
    for (int b = 0; b < 24; b += 2)
      sum += static_cast<uint8_t>(s[b]) << 8 | static_cast<uint8_t>(s[b + 1]);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    EXPECT_EQ(sum, 0xffffu);
    ASSERT_TRUE(FixTcpChecksum(&s));
    EXPECT_EQ(Verify(s, true), 0xffff);
    joined += s.substr(44);
    seq += static_cast<uint32_t>(s.size() - 44);
  }
  EXPECT_EQ(joined, data);
  EXPECT_EQ(SegmentTcp4(big, 65535), std::vector<std::string>{big});
}

TEST(PacketKeeper, FlowsTravelAsText) {
  for (const sys::TcpFlow& f : kFlows) EXPECT_EQ(DecodeFlow(EncodeFlow(f)).value(), f);
  EXPECT_FALSE(DecodeFlow("abc").ok());
  EXPECT_FALSE(DecodeFlow("zz/00").ok());
}

}  // namespace
}  // namespace stasis::net
