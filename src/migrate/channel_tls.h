// The TLS half of a Channel: one OpenSSL session over a non-blocking socket.
//
// Each call makes one SSL call under the session's mutex and says what it
// waits for instead of waiting: the Channel polls outside the lock, so a
// reader blocked on an idle link never holds up the writer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "sys/result.h"

namespace stasis::migrate {

class Tls {
 public:
  enum class Want { kNothing, kRead, kWrite };
  // What one SSL call did: `bytes` moved, or what it waits for, or the
  // peer's close_notify (end of stream).
  struct Step {
    size_t bytes = 0;
    Want want = Want::kNothing;
    bool end = false;
  };

  // A session over fd (borrowed) keyed by the token; `peer` names the other
  // end in errors.
  static Result<std::unique_ptr<Tls>> Create(int fd, const std::string& token, bool server,
                                             const std::string& peer);
  ~Tls();
  Tls(const Tls&) = delete;
  Tls& operator=(const Tls&) = delete;

  // kNothing once the handshake is done.
  Result<Step> Handshake();
  Result<Step> Read(uint8_t* buf, size_t len);
  Result<Step> Write(const uint8_t* data, size_t len);
  // Sends close_notify: the peer's Read sees the end of the stream.
  Result<Step> SendCloseNotify();

 private:
  struct Handles;
  explicit Tls(std::unique_ptr<Handles> h, std::string peer);
  Result<Step> Outcome(int ok, size_t bytes, const char* op);

  std::mutex mu_;  // every SSL call: OpenSSL sessions are not thread-safe
  std::unique_ptr<Handles> h_;
  std::string peer_;
};

}  // namespace stasis::migrate
