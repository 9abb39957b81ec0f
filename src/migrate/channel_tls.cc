#include "migrate/channel_tls.h"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <cstring>

namespace stasis::migrate {
namespace {

// Changing any of these makes every older peer fail the handshake as if it
// had another token: bump them with the channel version (channel.cc's hello).
constexpr char kPskIdentity[] = "stasis-migrate/1";
constexpr char kHkdfSalt[] = "stasis migration channel";
constexpr char kHkdfInfo[] = "stasis/1 tls13 external psk";
constexpr size_t kPskBytes = 32;
// TLS_AES_128_GCM_SHA256: AES-NI makes it the fastest suite here.
constexpr unsigned char kCipherId[] = {0x13, 0x01};
constexpr char kCipherName[] = "TLS_AES_128_GCM_SHA256";

struct CtxFree {
  void operator()(SSL_CTX* p) const { SSL_CTX_free(p); }
};
struct SslFree {
  void operator()(SSL* p) const { SSL_free(p); }
};
struct BioMethodFree {
  void operator()(BIO_METHOD* p) const { BIO_meth_free(p); }
};

// What OpenSSL left in this thread's error queue, oldest first; also whether
// it says the two ends hold different keys: the server finds that the PSK
// binder does not verify and (OpenSSL 3.0) answers with an illegal_parameter
// alert; other versions send decrypt_error. Both ends run the same fixed
// configuration, so in a handshake nothing else draws those alerts.
std::string DrainErrors(bool* wrong_key) {
  std::string text;
  while (unsigned long e = ERR_get_error()) {
    int reason = ERR_GET_REASON(e);
    if (reason == SSL_R_BINDER_DOES_NOT_VERIFY || reason == SSL_R_TLSV1_ALERT_DECRYPT_ERROR ||
        reason == SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER) {
      *wrong_key = true;
    }
    char line[256];
    ERR_error_string_n(e, line, sizeof line);
    if (!text.empty()) text += "; ";
    text += line;
  }
  return text;
}

Result<std::array<uint8_t, kPskBytes>> DerivePsk(const std::string& token) {
  std::array<uint8_t, kPskBytes> psk{};
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  if (kdf == nullptr) return Error::Unsupported("OpenSSL has no HKDF");
  EVP_KDF_CTX* kctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (kctx == nullptr) return Error(ErrorCode::kFailed, "EVP_KDF_CTX_new");
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>("SHA256"), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<char*>(token.data()),
                                        token.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<char*>(kHkdfSalt),
                                        sizeof kHkdfSalt - 1),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<char*>(kHkdfInfo),
                                        sizeof kHkdfInfo - 1),
      OSSL_PARAM_construct_end()};
  int ok = EVP_KDF_derive(kctx, psk.data(), psk.size(), params);
  EVP_KDF_CTX_free(kctx);
  if (ok != 1) {
    bool unused = false;
    return Error(ErrorCode::kFailed, "HKDF: " + DrainErrors(&unused));
  }
  return psk;
}

// --- a socket BIO that cannot raise SIGPIPE ---------------------------------
// OpenSSL's own socket BIO write()s, and a write to a connection the peer
// reset would kill a process that keeps SIGPIPE's default; library code may
// not change the process's signal dispositions, so send(MSG_NOSIGNAL).

int SocketOf(BIO* bio) { return static_cast<int>(reinterpret_cast<intptr_t>(BIO_get_data(bio))); }

int BioWrite(BIO* bio, const char* data, int len) {
  ssize_t n = send(SocketOf(bio), data, static_cast<size_t>(len), MSG_NOSIGNAL);
  BIO_clear_retry_flags(bio);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) BIO_set_retry_write(bio);
  return static_cast<int>(n);
}

int BioRead(BIO* bio, char* buf, int len) {
  ssize_t n = recv(SocketOf(bio), buf, static_cast<size_t>(len), 0);
  BIO_clear_retry_flags(bio);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) BIO_set_retry_read(bio);
  return static_cast<int>(n);
}

long BioCtrl(BIO*, int cmd, long, void*) {  // NOLINT(runtime/int): OpenSSL's signature
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;     // nothing is buffered here
}

int BioCreate(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

// --- PSK callbacks: the token is the only credential ------------------------

struct PskContext {
  std::array<uint8_t, kPskBytes> psk;
};

SSL_SESSION* NewPskSession(SSL* ssl, const PskContext& ctx) {
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kCipherId);
  if (cipher == nullptr) return nullptr;
  SSL_SESSION* session = SSL_SESSION_new();
  if (session == nullptr) return nullptr;
  if (SSL_SESSION_set1_master_key(session, ctx.psk.data(), ctx.psk.size()) != 1 ||
      SSL_SESSION_set_cipher(session, cipher) != 1 ||
      SSL_SESSION_set_protocol_version(session, TLS1_3_VERSION) != 1) {
    SSL_SESSION_free(session);
    return nullptr;
  }
  return session;  // OpenSSL takes this reference
}

int UsePskSession(SSL* ssl, const EVP_MD* md, const unsigned char** id, size_t* id_len,
                  SSL_SESSION** session) {
  auto* ctx = static_cast<PskContext*>(SSL_get_app_data(ssl));
  *session = nullptr;
  *id = nullptr;
  *id_len = 0;
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kCipherId);
  // After a HelloRetryRequest OpenSSL asks again with the chosen digest.
  if (cipher == nullptr || (md != nullptr && md != SSL_CIPHER_get_handshake_digest(cipher))) {
    return 1;
  }
  *session = NewPskSession(ssl, *ctx);
  if (*session == nullptr) return 0;
  *id = reinterpret_cast<const unsigned char*>(kPskIdentity);
  *id_len = sizeof kPskIdentity - 1;
  return 1;
}

int FindPskSession(SSL* ssl, const unsigned char* id, size_t id_len, SSL_SESSION** session) {
  auto* ctx = static_cast<PskContext*>(SSL_get_app_data(ssl));
  *session = nullptr;
  if (id_len != sizeof kPskIdentity - 1 || memcmp(id, kPskIdentity, id_len) != 0) {
    return 1;  // not our identity: no PSK, and with no certificate the handshake fails
  }
  *session = NewPskSession(ssl, *ctx);
  return *session != nullptr ? 1 : 0;
}

}  // namespace

struct Tls::Handles {
  PskContext psk;
  std::unique_ptr<BIO_METHOD, BioMethodFree> bio_method;
  std::unique_ptr<SSL_CTX, CtxFree> ctx;
  std::unique_ptr<SSL, SslFree> ssl;
};

Tls::Tls(std::unique_ptr<Handles> h, std::string peer) : h_(std::move(h)), peer_(std::move(peer)) {}
Tls::~Tls() = default;

namespace {

Status ConfigureContext(SSL_CTX* ctx, bool server) {
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_ciphersuites(ctx, kCipherName) != 1) {
    return Error::Unsupported("OpenSSL refuses TLS 1.3 with " + std::string(kCipherName));
  }
  // One connection per migration: no tickets to resume from.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  // Write() retries with a buffer that moves on as bytes go out.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_clear_mode(ctx, SSL_MODE_AUTO_RETRY);
  // A client must never settle for a server certificate in place of the PSK:
  // with no trust store, verifying any certificate fails.
  if (!server) SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  return Ok();
}

}  // namespace

Result<std::unique_ptr<Tls>> Tls::Create(int fd, const std::string& token, bool server,
                                         const std::string& peer) {
  ERR_clear_error();
  auto h = std::make_unique<Handles>();
  h->psk.psk = STASIS_TRY_CTX(DerivePsk(token), "TLS key from the token");
  h->bio_method.reset(BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "stasis socket"));
  if (!h->bio_method) return Error(ErrorCode::kFailed, "BIO_meth_new");
  BIO_meth_set_write(h->bio_method.get(), BioWrite);
  BIO_meth_set_read(h->bio_method.get(), BioRead);
  BIO_meth_set_ctrl(h->bio_method.get(), BioCtrl);
  BIO_meth_set_create(h->bio_method.get(), BioCreate);

  h->ctx.reset(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  if (!h->ctx) return Error(ErrorCode::kFailed, "SSL_CTX_new");
  STASIS_TRY(ConfigureContext(h->ctx.get(), server));
  h->ssl.reset(SSL_new(h->ctx.get()));
  if (!h->ssl) return Error(ErrorCode::kFailed, "SSL_new");
  SSL* ssl = h->ssl.get();
  SSL_set_app_data(ssl, &h->psk);
  if (server) {
    SSL_set_psk_find_session_callback(ssl, FindPskSession);
    SSL_set_accept_state(ssl);
  } else {
    SSL_set_psk_use_session_callback(ssl, UsePskSession);
    SSL_set_connect_state(ssl);
  }
  BIO* bio = BIO_new(h->bio_method.get());
  if (bio == nullptr) return Error(ErrorCode::kFailed, "BIO_new");
  BIO_set_data(bio, reinterpret_cast<void*>(static_cast<intptr_t>(fd)));
  SSL_set_bio(ssl, bio, bio);  // the SSL owns the BIO now
  return std::unique_ptr<Tls>(new Tls(std::move(h), peer));
}

Result<Tls::Step> Tls::Outcome(int ok, size_t bytes, const char* op) {
  if (ok == 1) return Step{bytes, Want::kNothing, false};
  int saved_errno = errno;
  int err = SSL_get_error(h_->ssl.get(), ok);
  switch (err) {
    case SSL_ERROR_WANT_READ:
      return Step{0, Want::kRead, false};
    case SSL_ERROR_WANT_WRITE:
      return Step{0, Want::kWrite, false};
    case SSL_ERROR_ZERO_RETURN:
      return Step{0, Want::kNothing, true};
    default:
      break;
  }
  bool wrong_key = false;
  std::string detail = DrainErrors(&wrong_key);
  if (wrong_key && !SSL_is_init_finished(h_->ssl.get())) {
    return Error::Permission("TLS " + std::string(op) + " with " + peer_ +
                             ": the peer does not have this token (" + detail + ")");
  }
  if (err == SSL_ERROR_SYSCALL && saved_errno != 0 && detail.empty()) {
    return Error::Io("TLS " + std::string(op) + " with " + peer_, saved_errno);
  }
  if (detail.find("unexpected eof") != std::string::npos || detail.empty()) {
    return Error::Io("TLS " + std::string(op) + " with " + peer_ +
                     ": the connection ended without a TLS close_notify (peer gone or link cut)");
  }
  return Error::Io("TLS " + std::string(op) + " with " + peer_ + ": " + detail);
}

Result<Tls::Step> Tls::Handshake() {
  std::lock_guard<std::mutex> hold(mu_);
  ERR_clear_error();
  errno = 0;
  int ok = SSL_do_handshake(h_->ssl.get());
  auto step = STASIS_TRY(Outcome(ok, 0, "handshake"));
  if (step.end) return Error::Io("TLS handshake with " + peer_ + ": the peer closed the session");
  if (ok == 1 && SSL_session_reused(h_->ssl.get()) != 1) {
    // Only the PSK authenticates; a handshake without it proves nothing.
    return Error::Permission("TLS handshake with " + peer_ + ": the peer did not use the token");
  }
  return step;
}

Result<Tls::Step> Tls::Read(uint8_t* buf, size_t len) {
  std::lock_guard<std::mutex> hold(mu_);
  ERR_clear_error();
  errno = 0;
  size_t got = 0;
  int ok = SSL_read_ex(h_->ssl.get(), buf, len, &got);
  return Outcome(ok, got, "read");
}

Result<Tls::Step> Tls::Write(const uint8_t* data, size_t len) {
  std::lock_guard<std::mutex> hold(mu_);
  ERR_clear_error();
  errno = 0;
  size_t put = 0;
  int ok = SSL_write_ex(h_->ssl.get(), data, len, &put);
  return Outcome(ok, put, "write");
}

Result<Tls::Step> Tls::SendCloseNotify() {
  std::lock_guard<std::mutex> hold(mu_);
  ERR_clear_error();
  errno = 0;
  int ok = SSL_shutdown(h_->ssl.get());
  // 0: sent, the peer's has not come (and need not: we only end our side).
  if (ok >= 0) return Step{};
  return Outcome(ok, 0, "shutdown");
}

}  // namespace stasis::migrate
