#include "sys/uffd.h"

#include <fmt/format.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

#include <cerrno>

#include "sys/kernel_abi.h"

namespace stasis::sys::uffd {

Status EnableWpAsync(int uffd) {
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = abi::kUffdFeatureWpAsync;
  if (ioctl(uffd, UFFDIO_API, &api) < 0) {
    return Error::Errno("UFFDIO_API with UFFD_FEATURE_WP_ASYNC (needs Linux 6.7)");
  }
  return Ok();
}

Result<bool> RegisterWp(int uffd, uint64_t start, uint64_t end) {
  struct uffdio_register reg = {};
  reg.range.start = start;
  reg.range.len = end - start;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) == 0) return true;
  if (errno == EBUSY || errno == EINVAL) return false;
  return Error::Errno(fmt::format("UFFDIO_REGISTER(WP) of {:#x}-{:#x}", start, end));
}

Status WriteProtect(int uffd, uint64_t start, uint64_t end) {
  struct uffdio_writeprotect wp = {};
  wp.range.start = start;
  wp.range.len = end - start;
  wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
  while (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0) {
    if (errno != EAGAIN && errno != EINTR) {
      return Error::Errno(fmt::format("UFFDIO_WRITEPROTECT of {:#x}-{:#x}", start, end));
    }
  }
  return Ok();
}

Result<std::vector<Range>> WrittenRanges(int pagemap_fd, uint64_t start, uint64_t end,
                                         size_t batch) {
  std::vector<Range> out;
  std::vector<abi::PageRegion> vec(batch);
  abi::PmScanArg arg = {};
  arg.size = sizeof arg;
  arg.flags = abi::kPmScanCheckWpasync;
  arg.category_mask = abi::kPageIsWritten;
  arg.return_mask = abi::kPageIsWritten;
  arg.vec = reinterpret_cast<uint64_t>(vec.data());
  arg.vec_len = vec.size();
  // The scan stops at walk_end when vec is full: go on from there.
  for (uint64_t from = start; from < end;) {
    arg.start = from;
    arg.end = end;
    long n = ioctl(pagemap_fd, abi::kPagemapScan, &arg);
    if (n < 0) {
      return Error::Errno(fmt::format("PAGEMAP_SCAN of {:#x}-{:#x} (needs Linux 6.7)", from, end));
    }
    for (long i = 0; i < n; ++i) {
      if (!out.empty() && out.back().end == vec[i].start) {
        out.back().end = vec[i].end;
      } else {
        out.push_back({vec[i].start, vec[i].end});
      }
    }
    if (arg.walk_end <= from) break;
    from = arg.walk_end;
  }
  return out;
}

}  // namespace stasis::sys::uffd
