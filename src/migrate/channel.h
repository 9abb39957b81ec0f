// The migration channel: one TCP connection between `stasis migrate` (the
// client, the source) and `stasis receive` (the server, the destination).
//
// Why TLS and a token: the stream carries a user's whole memory. Both ends
// hold the same token file (token.h); a TLS 1.3 pre-shared key derived from
// it authenticates both ends and encrypts the stream, with no certificates to
// hand out. A peer without the token fails the handshake, before a byte of
// the migration is read. `--insecure` (ChannelOptions::insecure) is plain TCP
// for a trusted link; both ends must say it, and a mismatch is refused at
// connection time with a message that says so.
//
// Why one object is both Sink and Source, from two threads: post-copy has
// the source send pages while it reads page requests, and the destination
// read pages while its fault thread sends requests. One thread may call
// Write/Flush/ShutdownWrite while another calls Read; two threads writing (or
// two reading) at once is the caller's to prevent. OpenSSL's SSL object is not
// safe for concurrent use, so every SSL call runs under one mutex and the
// waiting (poll) happens outside it on a non-blocking socket.
//
// The wire, before any migration byte: each end sends an 8-byte hello in
// clear, "STASIS", the channel version (1), the mode ('T' TLS, 'P' plain),
// and reads the peer's; so a TLS end and a plain end, or a stasis end and some
// other server, tell each other apart with a clear error instead of a TLS
// parse failure. Then, in TLS mode, a TLS 1.3 handshake: external PSK =
// HKDF-SHA256(token, fixed salt and info naming stasis and version 1),
// identity "stasis-migrate/1", TLS_AES_128_GCM_SHA256, (EC)DHE on top for
// forward secrecy, no certificates, no session tickets. A token shorter than
// kMinTokenBytes (token.h) is refused, since the handshake lets anyone on the
// path try to guess it offline.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "image/stream.h"
#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::migrate {

struct ChannelOptions {
  std::string token;           // ReadTokenFile's bytes; unused when insecure
  bool insecure = false;       // plain TCP: `--insecure`
  double bandwidth_mbps = 0;   // > 0 caps what Write sends (megabits/s): `--bandwidth`
  int io_timeout_ms = 60'000;  // Read/Write give up after this long without progress; <= 0 never
};

class Tls;  // channel_tls.h: the OpenSSL session, hidden so that callers need no OpenSSL headers

class Channel : public image::Sink, public image::Source {
 public:
  // Writes are gathered up to this much before they go out (Nagle is off, so
  // a small Write must not become a small segment; Flush sends it now).
  static constexpr size_t kWriteBuffer = 256 << 10;
  static constexpr size_t kReadBuffer = 256 << 10;

  // Connects to "HOST:PORT" ("[v6]:PORT" for an IPv6 literal) and runs the
  // handshake; timeout_ms bounds both.
  static Result<std::unique_ptr<Channel>> Connect(const std::string& host_port,
                                                  const ChannelOptions& options, int timeout_ms);
  ~Channel() override;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  Status Write(const void* data, size_t len) override;
  Status Flush() override;
  // Returns 0 only at the end the peer's ShutdownWrite() makes. A TLS
  // connection that ends without it (a killed peer, a cut link) is kIo, so a
  // truncated stream never passes for a complete one.
  Result<size_t> Read(void* buf, size_t len) override;

  // Deadline for each Read/Write to make progress; <= 0 waits forever.
  void SetTimeout(int ms) { io_timeout_ms_.store(ms); }
  // Flushes and ends our direction of the stream (TLS close_notify, then a
  // TCP FIN); the peer's Read then returns 0. We can go on reading.
  Status ShutdownWrite();
  // Ends the connection at once, from any thread: a Read or Write blocked in
  // another thread fails with kIo. The peer sees a dropped link, not an end
  // of stream. Resources go with the destructor.
  void Close();

  const std::string& peer() const { return peer_; }  // "ADDR:PORT", for messages
  bool insecure() const { return tls_ == nullptr; }
  // Payload bytes, before TLS framing: what the migration moved.
  uint64_t bytes_sent() const { return bytes_sent_.load(std::memory_order_relaxed); }
  uint64_t bytes_received() const { return bytes_received_.load(std::memory_order_relaxed); }
  int fd() const { return fd_.get(); }

 private:
  friend class Listener;
  Channel(sys::UniqueFd fd, std::string peer, const ChannelOptions& options);

  // Both ends' first steps: the clear hello, then TLS unless insecure.
  Status Handshake(const ChannelOptions& options, bool server,
                   std::chrono::steady_clock::time_point deadline);
  Status SendBuffered();
  Status SendAll(const uint8_t* data, size_t len);
  Result<size_t> SendSome(const uint8_t* data, size_t len);
  Result<size_t> ReceiveSome(uint8_t* buf, size_t len);
  // Sleeps until the bandwidth cap lets `len` more bytes go.
  void Throttle(size_t len);
  Error Broken(const std::string& what, int errnum = 0) const;

  sys::UniqueFd fd_;
  std::string peer_;
  std::unique_ptr<Tls> tls_;  // null in insecure mode
  std::atomic<int> io_timeout_ms_;
  std::atomic<bool> closed_{false};
  std::atomic<uint64_t> bytes_sent_{0};
  std::atomic<uint64_t> bytes_received_{0};

  // The writer's side.
  std::unique_ptr<uint8_t[]> write_buffer_;
  size_t write_used_ = 0;
  bool write_failed_ = false;  // the stream position is unknown after a failed send
  double bytes_per_second_;    // 0: no cap
  double bucket_ = 0;          // bytes the cap lets go now
  std::chrono::steady_clock::time_point bucket_time_;

  // The reader's side.
  std::unique_ptr<uint8_t[]> read_buffer_;
  size_t read_begin_ = 0;
  size_t read_end_ = 0;
};

// Where `stasis receive` waits for sources.
class Listener {
 public:
  // "ADDR:PORT"; port 0 picks a free one (port() tells which).
  static Result<Listener> Listen(const std::string& host_port);
  int port() const { return port_; }
  int fd() const { return fd_.get(); }  // to poll for a waiting connection
  // Waits for the next connection and runs its handshake within
  // handshake_timeout_ms. A failed handshake is that connection's error; the
  // listener goes on and the caller may Accept again.
  Result<std::unique_ptr<Channel>> Accept(const ChannelOptions& options, int handshake_timeout_ms);

 private:
  Listener(sys::UniqueFd fd, int port) : fd_(std::move(fd)), port_(port) {}
  sys::UniqueFd fd_;
  int port_;
};

}  // namespace stasis::migrate
