// Result<T> and Error: the one error-handling shape of Stasis.
//
// An Error carries a code, the errno captured on the failing line (0 when
// none) and a message that grows a chain of context on the way up:
//   "restore pipe: pid 4123 fd 7: pipe2: EMFILE (Too many open files)".
// Functions that can fail return Result<T>; callers use STASIS_TRY to
// propagate. There are no exceptions in engine code.
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

namespace stasis {

enum class ErrorCode {
  kFailed,       // a system call or an operation failed
  kUnsupported,  // the object exists but Stasis cannot carry it (yet)
  kCorrupt,      // an image is damaged or truncated
  kInvalid,      // bad input from the user or an inconsistent image
  kNotFound,     // a process, file or image is missing
  kPermission,   // refused for safety: a secret others can read, a peer without the token
  kTimeout,      // a peer stayed silent past its deadline
  kIo,           // a connection broke or ended early
};

class Error {
 public:
  Error(ErrorCode code, std::string message, int errnum = 0)
      : code_(code), message_(std::move(message)), errno_(errnum) {}

  // Captures errno now: call it on the line right after the failing call.
  static Error Errno(std::string what) {
    int saved = errno;
    return Error(ErrorCode::kFailed, std::move(what), saved);
  }
  static Error FromErrno(std::string what, int errnum) {
    return Error(ErrorCode::kFailed, std::move(what), errnum);
  }
  static Error Unsupported(std::string what) {
    return Error(ErrorCode::kUnsupported, std::move(what));
  }
  static Error Corrupt(std::string what) { return Error(ErrorCode::kCorrupt, std::move(what)); }
  static Error Invalid(std::string what) { return Error(ErrorCode::kInvalid, std::move(what)); }
  static Error NotFound(std::string what) { return Error(ErrorCode::kNotFound, std::move(what)); }
  static Error Permission(std::string what) {
    return Error(ErrorCode::kPermission, std::move(what));
  }
  static Error Timeout(std::string what) { return Error(ErrorCode::kTimeout, std::move(what)); }
  static Error Io(std::string what, int errnum = 0) {
    return Error(ErrorCode::kIo, std::move(what), errnum);
  }

  // Prepends "context: " to the message. Keeps code and errno.
  Error&& Context(const std::string& context) && {
    message_ = context + ": " + message_;
    return std::move(*this);
  }

  ErrorCode code() const { return code_; }
  int errnum() const { return errno_; }
  const std::string& message() const { return message_; }
  // The message followed by the errno name and text, when there is one.
  std::string ToString() const;

 private:
  ErrorCode code_;
  std::string message_;
  int errno_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return v_.index() == 0; }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }
  T* operator->() { return &value(); }
  T& operator*() & { return value(); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT: implicit by design

  bool ok() const { return ok_; }
  void value() const {}
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  Error error_{ErrorCode::kFailed, ""};
  bool ok_ = true;
};

using Status = Result<void>;

inline Status Ok() { return Status(); }

// Strerror-style name of an errno value ("EINVAL").
const char* ErrnoName(int errnum);

}  // namespace stasis

// Evaluates a Result; on error returns it from the enclosing function,
// otherwise yields the value. Uses a GNU statement expression (GCC/Clang).
#define STASIS_TRY(expr)                                                        \
  ({                                                                            \
    auto&& stasis_try_result_ = (expr);                                         \
    if (!stasis_try_result_.ok()) return std::move(stasis_try_result_).error(); \
    std::move(stasis_try_result_).value();                                      \
  })

// Like STASIS_TRY, but adds context to the error on the way up.
#define STASIS_TRY_CTX(expr, context)                                                            \
  ({                                                                                             \
    auto&& stasis_try_result_ = (expr);                                                          \
    if (!stasis_try_result_.ok()) return std::move(stasis_try_result_).error().Context(context); \
    std::move(stasis_try_result_).value();                                                       \
  })
