#include "sys/pagemap.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <string>

namespace stasis::sys::pagemap {
namespace {

Result<UniqueFd> OpenProc(pid_t pid, const char* name) {
  std::string path = fmt::format("/proc/{}/{}", pid, name);
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Error::Errno("open " + path);
  return fd;
}

}  // namespace

Result<UniqueFd> OpenPagemap(pid_t pid) { return OpenProc(pid, "pagemap"); }

Result<UniqueFd> OpenMem(pid_t pid) { return OpenProc(pid, "mem"); }

Status Read(int pagemap, uint64_t first_page, uint64_t count, uint64_t* out) {
  size_t len = count * sizeof(uint64_t);
  ssize_t n = pread(pagemap, out, len, static_cast<off_t>(first_page * sizeof(uint64_t)));
  if (n != static_cast<ssize_t>(len)) {
    return Error::Errno(fmt::format("read pagemap at page {:#x}", first_page));
  }
  return Ok();
}

}  // namespace stasis::sys::pagemap
