#include "migrate/token.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "sys/unique_fd.h"

namespace stasis::migrate {
namespace {

std::string OctalMode(mode_t mode) {
  char text[8];
  snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

// Checks what the file is and who may touch it, on the open fd so that a
// rename between the check and the read cannot swap the file.
Status CheckTokenStat(const std::string& path, const struct stat& st) {
  if (!S_ISREG(st.st_mode)) {
    return Error::Invalid("token file " + path + " is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    return Error::Permission("token file " + path +
                             " is readable or writable by group or others (mode " +
                             OctalMode(st.st_mode) + "): chmod 600 " + path);
  }
  if (st.st_uid != geteuid()) {
    return Error::Permission("token file " + path + " is owned by uid " +
                             std::to_string(st.st_uid) + ", not by us (uid " +
                             std::to_string(geteuid()) + ")");
  }
  if (st.st_size == 0) return Error::Invalid("token file " + path + " is empty");
  if (static_cast<size_t>(st.st_size) > kMaxTokenBytes + 1) {
    return Error::Invalid("token file " + path + " is longer than " +
                          std::to_string(kMaxTokenBytes) + " bytes: is it the right file?");
  }
  return Ok();
}

}  // namespace

Result<std::string> ReadTokenFile(const std::string& path) {
  // O_NONBLOCK: a FIFO planted at the path must be refused, not waited on.
  sys::UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd.valid()) {
    if (errno == ENOENT) return Error::NotFound("token file " + path + " does not exist");
    return Error::Errno("open token file " + path);
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return Error::Errno("stat token file " + path);
  STASIS_TRY(CheckTokenStat(path, st));

  std::string token(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < token.size()) {
    ssize_t n = read(fd.get(), token.data() + got, token.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::Errno("read token file " + path);
    if (n == 0) break;  // shrank while we read: judge what is there
    got += static_cast<size_t>(n);
  }
  token.resize(got);
  if (!token.empty() && token.back() == '\n') token.pop_back();
  if (token.empty()) return Error::Invalid("token file " + path + " is empty");
  if (token.size() < kMinTokenBytes) {
    return Error::Invalid("token file " + path + " holds " + std::to_string(token.size()) +
                          " bytes, fewer than " + std::to_string(kMinTokenBytes) +
                          ": make one with `head -c 32 /dev/urandom | base64 > " + path + "`");
  }
  if (token.size() > kMaxTokenBytes) {
    return Error::Invalid("token file " + path + " is longer than " +
                          std::to_string(kMaxTokenBytes) + " bytes: is it the right file?");
  }
  return token;
}

}  // namespace stasis::migrate
