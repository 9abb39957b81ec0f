#include "migrate/channel.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "sys/unique_fd.h"

namespace stasis::migrate {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kTokenA[] = "token-a-0123456789abcdef";
constexpr char kTokenB[] = "token-b-0123456789abcdef";
constexpr int kHandshakeMs = 10'000;

ChannelOptions Tls(const char* token = kTokenA) { return ChannelOptions{token, false, 0}; }
ChannelOptions Plain() { return ChannelOptions{"", true, 0}; }

struct Pair {
  Result<std::unique_ptr<Channel>> client = Error::Invalid("not run");
  Result<std::unique_ptr<Channel>> server = Error::Invalid("not run");
};

// A client and a server over 127.0.0.1 on a port the kernel picks.
Pair Connect(const ChannelOptions& server_options, const ChannelOptions& client_options) {
  Pair pair;
  auto listener = Listener::Listen("127.0.0.1:0");
  if (!listener.ok()) {
    pair.server = std::move(listener).error();
    return pair;
  }
  EXPECT_GT(listener->port(), 0);
  std::thread accepting([&] { pair.server = listener->Accept(server_options, kHandshakeMs); });
  pair.client = Channel::Connect("127.0.0.1:" + std::to_string(listener->port()), client_options,
                                 kHandshakeMs);
  accepting.join();
  return pair;
}

uint8_t PatternByte(uint64_t offset, uint8_t seed) {
  return static_cast<uint8_t>((offset * 0x9E3779B1u >> 11) ^ (offset >> 20) ^ seed);
}

// Writes `total` bytes of the pattern in writes of varied sizes (small
// control-sized ones, page runs bigger than the buffer), then ends the stream.
Status SendPattern(Channel& ch, uint64_t total, uint8_t seed) {
  std::vector<uint8_t> buf(1 << 20);
  const size_t sizes[] = {16, 4096, 300, 1 << 20, 64 << 10, 7, 512 << 10};
  uint64_t offset = 0;
  for (size_t i = 0; offset < total; ++i) {
    size_t n = std::min<uint64_t>(sizes[i % std::size(sizes)], total - offset);
    for (size_t j = 0; j < n; ++j) buf[j] = PatternByte(offset + j, seed);
    STASIS_TRY(ch.Write(buf.data(), n));
    offset += n;
  }
  STASIS_TRY(ch.Flush());
  return ch.ShutdownWrite();
}

// Reads to the end of the stream and checks every byte.
Result<uint64_t> ReceivePattern(Channel& ch, uint8_t seed) {
  std::vector<uint8_t> buf(300 << 10);
  uint64_t offset = 0;
  const size_t sizes[] = {16, 300 << 10, 5000, 1};
  for (size_t i = 0;; ++i) {
    size_t n = STASIS_TRY(ch.Read(buf.data(), sizes[i % std::size(sizes)]));
    if (n == 0) return offset;
    for (size_t j = 0; j < n; ++j) {
      if (buf[j] != PatternByte(offset + j, seed)) {
        return Error::Corrupt("byte " + std::to_string(offset + j) + " differs");
      }
    }
    offset += n;
  }
}

void RoundTripBothWays(const ChannelOptions& options) {
  constexpr uint64_t kBytes = 64ull << 20;
  Pair pair = Connect(options, options);
  ASSERT_TRUE(pair.client.ok()) << pair.client.error().ToString();
  ASSERT_TRUE(pair.server.ok()) << pair.server.error().ToString();
  Channel& client = **pair.client;
  Channel& server = **pair.server;
  EXPECT_EQ(client.insecure(), options.insecure);

  // One thread reading and one writing on each end, all four at once.
  auto client_sends =
      std::async(std::launch::async, [&] { return SendPattern(client, kBytes, 1); });
  auto server_sends =
      std::async(std::launch::async, [&] { return SendPattern(server, kBytes, 2); });
  auto server_gets = std::async(std::launch::async, [&] { return ReceivePattern(server, 1); });
  auto client_gets = std::async(std::launch::async, [&] { return ReceivePattern(client, 2); });
  Status a = client_sends.get();
  Status b = server_sends.get();
  Result<uint64_t> c = server_gets.get();
  Result<uint64_t> d = client_gets.get();
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  ASSERT_TRUE(b.ok()) << b.error().ToString();
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  ASSERT_TRUE(d.ok()) << d.error().ToString();
  EXPECT_EQ(*c, kBytes);
  EXPECT_EQ(*d, kBytes);
  EXPECT_EQ(client.bytes_sent(), kBytes);
  EXPECT_EQ(client.bytes_received(), kBytes);
  EXPECT_EQ(server.bytes_sent(), kBytes);
  EXPECT_EQ(server.bytes_received(), kBytes);
}

TEST(Channel, RoundTrip64MiBBothWaysTls) { RoundTripBothWays(Tls()); }
TEST(Channel, RoundTrip64MiBBothWaysInsecure) { RoundTripBothWays(Plain()); }

// The way a migration uses it: the image stream writer on one end, its
// reader on the other.
TEST(Channel, CarriesAnImageStream) {
  Pair pair = Connect(Tls(), Tls());
  ASSERT_TRUE(pair.client.ok()) << pair.client.error().ToString();
  ASSERT_TRUE(pair.server.ok()) << pair.server.error().ToString();
  constexpr uint32_t kRuns = 20;
  constexpr uint32_t kPagesPerRun = 64;
  auto writing = std::async(std::launch::async, [&]() -> Status {
    image::Writer writer(**pair.client);
    STASIS_TRY(writer.Begin());
    std::vector<uint8_t> pages(kPagesPerRun * image::kPageSize);
    for (uint32_t run = 0; run < kRuns; ++run) {
      std::fill(pages.begin(), pages.end(), static_cast<uint8_t>(run));
      STASIS_TRY(
          writer.WritePages(42, 0x10000000 + run * pages.size(), pages.data(), kPagesPerRun));
    }
    STASIS_TRY(writer.WriteTrailer());
    return (*pair.client)->ShutdownWrite();
  });
  image::Reader reader(**pair.server);
  ASSERT_TRUE(reader.Begin().ok());
  image::Record record;
  uint32_t runs = 0;
  for (;;) {
    Result<bool> more = reader.Next(&record);
    ASSERT_TRUE(more.ok()) << more.error().ToString();
    if (!*more) break;
    if (record.type != image::RecordType::kPages) continue;
    Result<image::PageRun> run = image::ParsePageRun(record);
    ASSERT_TRUE(run.ok()) << run.error().ToString();
    EXPECT_EQ(run->npages, kPagesPerRun);
    EXPECT_EQ(run->data[image::kPageSize * kPagesPerRun - 1], static_cast<uint8_t>(runs));
    ++runs;
  }
  Status written = writing.get();
  ASSERT_TRUE(written.ok()) << written.error().ToString();
  EXPECT_EQ(runs, kRuns);
}

void ExpectRefused(const Result<std::unique_ptr<Channel>>& got, ErrorCode code,
                   const std::string& words) {
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code(), code) << got.error().ToString();
  EXPECT_NE(got.error().message().find(words), std::string::npos) << got.error().ToString();
}

TEST(Channel, WrongTokenRefusedOnBothSides) {
  Pair pair = Connect(Tls(kTokenA), Tls(kTokenB));
  ExpectRefused(pair.server, ErrorCode::kPermission, "the peer does not have this token");
  ExpectRefused(pair.client, ErrorCode::kPermission, "the peer does not have this token");
}

TEST(Channel, TlsServerRefusesPlainClient) {
  Pair pair = Connect(Tls(), Plain());
  ExpectRefused(pair.server, ErrorCode::kPermission,
                "the peer speaks plain TCP: both ends need --insecure or neither");
  ExpectRefused(pair.client, ErrorCode::kPermission,
                "the peer speaks TLS: both ends need --insecure or neither");
}

TEST(Channel, PlainServerRefusesTlsClient) {
  Pair pair = Connect(Plain(), Tls());
  ExpectRefused(pair.server, ErrorCode::kPermission,
                "the peer speaks TLS: both ends need --insecure or neither");
  ExpectRefused(pair.client, ErrorCode::kPermission,
                "the peer speaks plain TCP: both ends need --insecure or neither");
}

TEST(Channel, TlsWithoutTokenIsRefusedBeforeConnecting) {
  auto listener = Listener::Listen("127.0.0.1:0");
  ASSERT_TRUE(listener.ok()) << listener.error().ToString();
  std::string address = "127.0.0.1:" + std::to_string(listener->port());
  ExpectRefused(Channel::Connect(address, Tls(""), kHandshakeMs), ErrorCode::kInvalid, "no token");
  ExpectRefused(Channel::Connect(address, Tls("short"), kHandshakeMs), ErrorCode::kInvalid,
                "no token");
  ExpectRefused(listener->Accept(Tls(""), kHandshakeMs), ErrorCode::kInvalid, "no token");
}

// A TCP server that accepts and says nothing, or sends `greeting`.
class RawServer {
 public:
  explicit RawServer(std::string greeting = "") : greeting_(std::move(greeting)) {
    listen_.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(listen_.get(), reinterpret_cast<sockaddr*>(&a), len) != 0 ||
        listen(listen_.get(), 4) != 0 ||
        getsockname(listen_.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      return;
    }
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      conn_.reset(accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (conn_.valid() && !greeting_.empty()) {
        (void)!write(conn_.get(), greeting_.data(), greeting_.size());
      }
    });
  }
  ~RawServer() {
    if (thread_.joinable()) {
      shutdown(listen_.get(), SHUT_RDWR);  // wakes accept if nobody came
      thread_.join();
    }
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  std::string greeting_;
  sys::UniqueFd listen_;
  sys::UniqueFd conn_;
  int port_ = 0;
  std::thread thread_;
};

TEST(Channel, ConnectTimesOutOnASilentPeer) {
  RawServer silent;
  for (ChannelOptions options : {Tls(), Plain()}) {
    auto start = Clock::now();
    auto got = Channel::Connect(silent.address(), options, 300);
    ExpectRefused(got, ErrorCode::kTimeout, "127.0.0.1:");
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
  }
}

TEST(Channel, ConnectTimesOutOnAPeerSilentInTheTlsHandshake) {
  RawServer hello_only(std::string("STASIS\x01T", 8));  // says hello, then nothing
  auto got = Channel::Connect(hello_only.address(), Tls(), 300);
  ExpectRefused(got, ErrorCode::kTimeout, "TLS handshake");
}

TEST(Channel, AcceptTimesOutOnASilentClient) {
  auto listener = Listener::Listen("127.0.0.1:0");
  ASSERT_TRUE(listener.ok()) << listener.error().ToString();
  sys::UniqueFd raw(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(listener->port()));
  ASSERT_EQ(connect(raw.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ExpectRefused(listener->Accept(Tls(), 300), ErrorCode::kTimeout, "stayed silent");
}

TEST(Channel, RefusesAServerThatIsNotStasis) {
  RawServer http("HTTP/1.1 400 Bad Request\r\n\r\n");
  ExpectRefused(Channel::Connect(http.address(), Tls(), kHandshakeMs), ErrorCode::kInvalid,
                "is not a stasis migration endpoint");
}

TEST(Channel, ReadTimesOutOnASilentPeerAndNamesIt) {
  Pair pair = Connect(Tls(), Tls());
  ASSERT_TRUE(pair.client.ok()) << pair.client.error().ToString();
  ASSERT_TRUE(pair.server.ok()) << pair.server.error().ToString();
  (*pair.client)->SetTimeout(200);
  uint8_t byte;
  auto got = (*pair.client)->Read(&byte, 1);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code(), ErrorCode::kTimeout);
  EXPECT_NE(got.error().message().find((*pair.client)->peer()), std::string::npos)
      << got.error().message();
}

TEST(Channel, FlushSendsASmallMessageNow) {
  for (ChannelOptions options : {Tls(), Plain()}) {
    Pair pair = Connect(options, options);
    ASSERT_TRUE(pair.client.ok()) << pair.client.error().ToString();
    ASSERT_TRUE(pair.server.ok()) << pair.server.error().ToString();
    ASSERT_TRUE((*pair.client)->Write("ready", 5).ok());
    ASSERT_TRUE((*pair.client)->Flush().ok());
    (*pair.server)->SetTimeout(5000);
    char got[5];
    size_t n = 0;
    while (n < 5) {
      auto r = (*pair.server)->Read(got + n, 5 - n);
      ASSERT_TRUE(r.ok()) << r.error().ToString();
      ASSERT_GT(*r, 0u);
      n += *r;
    }
    EXPECT_EQ(std::string(got, 5), "ready");
  }
}

TEST(Channel, TlsStreamCutWithoutShutdownIsAnErrorNotAnEnd) {
  Pair pair = Connect(Tls(), Tls());
  ASSERT_TRUE(pair.client.ok()) << pair.client.error().ToString();
  ASSERT_TRUE(pair.server.ok()) << pair.server.error().ToString();
  ASSERT_TRUE((*pair.client)->Write("partial", 7).ok());
  ASSERT_TRUE((*pair.client)->Flush().ok());
  pair.client->reset();  // a killed source: no close_notify
  char buf[64];
  auto first = (*pair.server)->Read(buf, sizeof buf);
  ASSERT_TRUE(first.ok()) << first.error().ToString();
  EXPECT_EQ(*first, 7u);
  auto next = (*pair.server)->Read(buf, sizeof buf);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.error().code(), ErrorCode::kIo) << next.error().ToString();
}

TEST(Channel, CloseWakesABlockedReader) {
  for (ChannelOptions options : {Tls(), Plain()}) {
    Pair pair = Connect(options, options);
    ASSERT_TRUE(pair.client.ok()) << pair.client.error().ToString();
    ASSERT_TRUE(pair.server.ok()) << pair.server.error().ToString();
    Channel& server = **pair.server;
    auto reading = std::async(std::launch::async, [&] {
      uint8_t byte;
      return server.Read(&byte, 1);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    server.Close();
    Result<size_t> got = reading.get();
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.error().code(), ErrorCode::kIo) << got.error().ToString();
    EXPECT_NE(got.error().message().find("closed"), std::string::npos) << got.error().message();
  }
}

TEST(Channel, WriteTimesOutWhenThePeerStopsReadingAndCloseWakesIt) {
  for (ChannelOptions options : {Tls(), Plain()}) {
    Pair pair = Connect(options, options);
    ASSERT_TRUE(pair.client.ok()) << pair.client.error().ToString();
    ASSERT_TRUE(pair.server.ok()) << pair.server.error().ToString();
    Channel& client = **pair.client;
    client.SetTimeout(300);
    std::vector<uint8_t> run(1 << 20, 0x42);
    // The server never reads: once the socket buffers are full, a write stalls.
    Status sent = Ok();
    for (int i = 0; i < 1024 && sent.ok(); ++i) sent = client.Write(run.data(), run.size());
    ASSERT_FALSE(sent.ok());
    EXPECT_EQ(sent.error().code(), ErrorCode::kTimeout) << sent.error().ToString();
    EXPECT_NE(sent.error().message().find(client.peer()), std::string::npos);

    // A stalled writer with no deadline is woken by Close from another thread.
    Pair again = Connect(options, options);
    ASSERT_TRUE(again.client.ok()) << again.client.error().ToString();
    ASSERT_TRUE(again.server.ok()) << again.server.error().ToString();
    Channel& writer = **again.client;
    writer.SetTimeout(0);
    auto writing = std::async(std::launch::async, [&] {
      Status st = Ok();
      for (int i = 0; i < 1024 && st.ok(); ++i) st = writer.Write(run.data(), run.size());
      return st;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    writer.Close();
    Status stopped = writing.get();
    ASSERT_FALSE(stopped.ok());
    EXPECT_EQ(stopped.error().code(), ErrorCode::kIo) << stopped.error().ToString();
  }
}

TEST(Channel, BandwidthCapIsRoughlyRespected) {
  constexpr uint64_t kBytes = 8 << 20;
  ChannelOptions capped = Tls();
  capped.bandwidth_mbps = 80;  // 10 MB/s: about 0.84 s for 8 MiB
  Pair pair = Connect(Tls(), capped);
  ASSERT_TRUE(pair.client.ok()) << pair.client.error().ToString();
  ASSERT_TRUE(pair.server.ok()) << pair.server.error().ToString();
  auto start = Clock::now();
  auto receiving = std::async(std::launch::async, [&] { return ReceivePattern(**pair.server, 3); });
  Status sent = SendPattern(**pair.client, kBytes, 3);
  ASSERT_TRUE(sent.ok()) << sent.error().ToString();
  Result<uint64_t> got = receiving.get();
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  EXPECT_EQ(*got, kBytes);
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(500));
}

TEST(Channel, WorksOverIpv6AndNamesThePeerWithBrackets) {
  auto listener = Listener::Listen("[::1]:0");
  if (!listener.ok() && listener.error().errnum() == EADDRNOTAVAIL) {
    GTEST_SKIP() << "no IPv6 loopback here";
  }
  ASSERT_TRUE(listener.ok()) << listener.error().ToString();
  Result<std::unique_ptr<Channel>> server = Error::Invalid("not run");
  std::thread accepting([&] { server = listener->Accept(Tls(), kHandshakeMs); });
  auto client = Channel::Connect("[::1]:" + std::to_string(listener->port()), Tls(), kHandshakeMs);
  accepting.join();
  ASSERT_TRUE(client.ok()) << client.error().ToString();
  ASSERT_TRUE(server.ok()) << server.error().ToString();
  EXPECT_EQ((*client)->peer(), "[::1]:" + std::to_string(listener->port()));
  EXPECT_EQ((*server)->peer().rfind("[::1]:", 0), 0u) << (*server)->peer();
}

TEST(Channel, RefusesBadAddresses) {
  for (const char* bad : {"127.0.0.1", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:http"}) {
    auto got = Channel::Connect(bad, Plain(), 1000);
    ASSERT_FALSE(got.ok()) << bad;
    EXPECT_EQ(got.error().code(), ErrorCode::kInvalid) << got.error().ToString();
  }
  auto nobody = Listener::Listen("127.0.0.1:0");
  ASSERT_TRUE(nobody.ok());
  int port = nobody->port();
  nobody = Error::Invalid("closed");  // frees the port: nobody listens there now
  auto refused = Channel::Connect("127.0.0.1:" + std::to_string(port), Plain(), 1000);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::kIo) << refused.error().ToString();
}

}  // namespace
}  // namespace stasis::migrate
