#include "sys/result.h"

#include <cstring>

namespace stasis {

const char* ErrnoName(int errnum) {
  const char* name = strerrorname_np(errnum);
  return name != nullptr ? name : "E?";
}

std::string Error::ToString() const {
  if (errno_ == 0) return message_;
  return message_ + ": " + ErrnoName(errno_) + " (" + std::strerror(errno_) + ")";
}

}  // namespace stasis
