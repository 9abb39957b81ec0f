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

Status EnableMissing(int uffd) {
  struct uffdio_api api = {};
  api.api = UFFD_API;
  if (ioctl(uffd, UFFDIO_API, &api) < 0) return Error::Errno("UFFDIO_API");
  return Ok();
}

Status RegisterMissing(int uffd, uint64_t start, uint64_t end) {
  struct uffdio_register reg = {};
  reg.range.start = start;
  reg.range.len = end - start;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
    return Error::Errno(fmt::format("UFFDIO_REGISTER(MISSING) of {:#x}-{:#x}", start, end));
  }
  return Ok();
}

Status Unregister(int uffd, uint64_t start, uint64_t end) {
  struct uffdio_range range = {start, end - start};
  if (ioctl(uffd, UFFDIO_UNREGISTER, &range) < 0) {
    return Error::Errno(fmt::format("UFFDIO_UNREGISTER of {:#x}-{:#x}", start, end));
  }
  return Ok();
}

Result<uint64_t> Copy(int uffd, uint64_t dst, const void* src, uint64_t len) {
  uint64_t done = 0;
  while (done < len) {
    struct uffdio_copy copy = {};
    copy.dst = dst + done;
    copy.src = reinterpret_cast<uint64_t>(src) + done;
    copy.len = len - done;
    if (ioctl(uffd, UFFDIO_COPY, &copy) == 0) return len;
    int err = errno;
    if (copy.copy > 0) done += static_cast<uint64_t>(copy.copy);
    if (err == EEXIST) return done;
    if (err != EAGAIN && err != EINTR) {
      return Error::FromErrno(fmt::format("UFFDIO_COPY to {:#x}", dst + done), err);
    }
  }
  return len;
}

Status ZeroPage(int uffd, uint64_t start, uint64_t end) {
  struct uffdio_zeropage zero = {};
  zero.range.start = start;
  zero.range.len = end - start;
  while (ioctl(uffd, UFFDIO_ZEROPAGE, &zero) < 0) {
    if (errno == EEXIST) {
      struct uffdio_range range = {start, end - start};
      if (ioctl(uffd, UFFDIO_WAKE, &range) < 0) return Error::Errno("UFFDIO_WAKE");
      return Ok();
    }
    if (errno != EAGAIN && errno != EINTR) {
      return Error::Errno(fmt::format("UFFDIO_ZEROPAGE of {:#x}-{:#x}", start, end));
    }
  }
  return Ok();
}

namespace {

// PAGEMAP_SCAN for pages in `category`, merged into ranges.
Result<std::vector<Range>> Scan(int pagemap_fd, uint64_t start, uint64_t end, uint64_t category,
                                uint64_t inverted, uint64_t flags, size_t batch) {
  std::vector<Range> out;
  std::vector<abi::PageRegion> vec(batch);
  abi::PmScanArg arg = {};
  arg.size = sizeof arg;
  arg.flags = flags;
  arg.category_mask = category;
  arg.category_inverted_mask = inverted;
  arg.return_mask = category;
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

}  // namespace

Result<std::vector<Range>> WrittenRanges(int pagemap_fd, uint64_t start, uint64_t end,
                                         size_t batch) {
  return Scan(pagemap_fd, start, end, abi::kPageIsWritten, 0, abi::kPmScanCheckWpasync, batch);
}

Result<std::vector<Range>> PresentRanges(int pagemap_fd, uint64_t start, uint64_t end) {
  // Inverted: pages that are present and not the zero page.
  return Scan(pagemap_fd, start, end, abi::kPageIsPresent | abi::kPageIsPfnZero,
              abi::kPageIsPfnZero, 0, 512);
}

}  // namespace stasis::sys::uffd
