#include "kinds/inotify.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>

#include "inotify.pb.h"
#include "sys/proc.h"

namespace stasis::kinds::inotify {
namespace {

// F_SETFL changes only these; an inotify fd is always O_RDONLY.
constexpr uint32_t kSettableFlags = O_APPEND | O_ASYNC | O_NOATIME | O_NONBLOCK;
constexpr size_t kMaxHandleBytes = 128;  // MAX_HANDLE_SZ

template <typename T>
bool Hex(std::string_view s, T* out) {
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out, 16);
  return ec == std::errc() && end == s.data() + s.size();
}

// The kernel's dev_t (MINORBITS 20) as userspace's.
dev_t UserDev(uint32_t sdev) { return makedev(sdev >> 20, sdev & 0xfffff); }

// /proc/self/mountinfo writes space, tab, newline and backslash as \ooo.
std::string Unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      out.push_back(
          static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// A mount point of the filesystem on `dev`, for open_by_handle_at.
Result<sys::UniqueFd> OpenMountOf(dev_t dev, const std::string& what) {
  std::string text = STASIS_TRY(sys::proc::ReadFile("/proc/self/mountinfo"));
  std::string want = fmt::format("{}:{}", major(dev), minor(dev));
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string_view line(text.data() + pos, eol - pos);
    pos = eol + 1;
    // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw": fields 3 and 5.
    std::vector<std::string_view> f;
    size_t i = 0;
    while (i < line.size() && f.size() < 5) {
      size_t sp = line.find(' ', i);
      if (sp == std::string_view::npos) sp = line.size();
      f.push_back(line.substr(i, sp - i));
      i = sp + 1;
    }
    if (f.size() < 5 || f[2] != want) continue;
    // Not O_PATH: open_by_handle_at does not take an O_PATH mount fd (EBADF).
    sys::UniqueFd fd(open(Unescape(f[4]).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (fd.valid()) return fd;
  }
  return Error::Unsupported(
      fmt::format("{}: no mount of device {} in the dumper's mount namespace", what, want));
}

// The path of the watched inode, checked to lead back to it.
Result<std::string> PathOf(const WatchLine& w, const std::string& what) {
  if (!w.has_handle) {
    return Error::Unsupported(
        fmt::format("{}: watch {} is on a filesystem that gives no file handles (inode {:#x})",
                    what, w.wd, w.ino));
  }
  dev_t dev = UserDev(w.sdev);
  sys::UniqueFd mount = STASIS_TRY(OpenMountOf(dev, what));
  struct {
    struct file_handle head;
    unsigned char bytes[kMaxHandleBytes];
  } h = {};
  h.head.handle_bytes = static_cast<unsigned int>(w.handle.size());
  h.head.handle_type = w.handle_type;
  std::copy(w.handle.begin(), w.handle.end(), h.head.f_handle);
  sys::UniqueFd fd(open_by_handle_at(mount.get(), &h.head, O_PATH | O_CLOEXEC));
  if (!fd.valid()) {
    return Error::Errno(
        fmt::format("{}: watch {}: open_by_handle_at (inode {:#x})", what, w.wd, w.ino));
  }
  std::string path = STASIS_TRY(sys::proc::ReadLink(fmt::format("/proc/self/fd/{}", fd.get())));
  struct stat st;
  if (lstat(path.c_str(), &st) < 0 || st.st_dev != dev || st.st_ino != w.ino) {
    return Error::Unsupported(
        fmt::format("{}: watch {} is on inode {:#x} of device {}:{}, which no path leads to ('{}')",
                    what, w.wd, w.ino, major(dev), minor(dev), path));
  }
  return path;
}

Status Drain(int fd, const std::string& what) {
  alignas(struct inotify_event) char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return Ok();
    return Error::Errno(what + ": read away the events of the scratch watches");
  }
}

}  // namespace

Result<WatchLine> ParseWatchLine(std::string_view text) {
  WatchLine w;
  bool have_wd = false, have_ino = false, have_sdev = false, have_mask = false;
  size_t handle_bytes = 0;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && text[i] == ' ') ++i;
    size_t end = text.find(' ', i);
    if (end == std::string_view::npos) end = text.size();
    std::string_view word = text.substr(i, end - i);
    i = end;
    if (word.empty()) continue;
    size_t colon = word.find(':');
    if (colon == std::string_view::npos) {
      return Error::Invalid(fmt::format("inotify line '{}': '{}' is not key:value", text, word));
    }
    std::string_view key = word.substr(0, colon), value = word.substr(colon + 1);
    bool ok = true;
    if (key == "wd") {
      ok = have_wd = Hex(value, &w.wd);
    } else if (key == "ino") {
      ok = have_ino = Hex(value, &w.ino);
    } else if (key == "sdev") {
      ok = have_sdev = Hex(value, &w.sdev);
    } else if (key == "mask") {
      ok = have_mask = Hex(value, &w.mask);
    } else if (key == "ignored_mask") {
      ok = Hex(value, &w.ignored_mask);
    } else if (key == "fhandle-bytes") {
      ok = Hex(value, &handle_bytes) && handle_bytes <= kMaxHandleBytes;
    } else if (key == "fhandle-type") {
      ok = Hex(value, &w.handle_type);
    } else if (key == "f_handle") {
      ok = value.size() % 2 == 0;
      for (size_t j = 0; ok && j < value.size(); j += 2) {
        unsigned char byte = 0;
        ok = Hex(value.substr(j, 2), &byte);
        w.handle.push_back(static_cast<char>(byte));
      }
      w.has_handle = ok;
    }  // other keys: newer kernels may add some; they do not change the watch
    if (!ok) return Error::Invalid(fmt::format("inotify line '{}': bad {} '{}'", text, key, value));
  }
  if (!have_wd || !have_ino || !have_sdev || !have_mask) {
    return Error::Invalid(fmt::format("inotify line '{}': wd, ino, sdev or mask missing", text));
  }
  if (w.has_handle && w.handle.size() != handle_bytes) {
    return Error::Invalid(fmt::format("inotify line '{}': f_handle has {} bytes, fhandle-bytes {}",
                                      text, w.handle.size(), handle_bytes));
  }
  return w;
}

bool Matches(const FdDumpInput& in) { return in.link == "anon_inode:inotify"; }

Status Dump(DumpContext&, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  int queued = 0;
  if (ioctl(in.local.get(), FIONREAD, &queued) < 0) return Error::Errno(what + ": FIONREAD");
  if (queued > 0) {
    return Error::Unsupported(fmt::format(
        "{}: {} bytes of inotify events are queued unread; they cannot be queued again after a "
        "restore",
        what, queued));
  }
  image::InotifyState state;
  for (const auto& [key, value] : in.info.extra) {
    if (key != "inotify") continue;
    WatchLine w = STASIS_TRY_CTX(ParseWatchLine(value), what);
    if (w.ignored_mask != 0) {
      return Error::Unsupported(
          fmt::format("{}: watch {} has ignored_mask {:#x}", what, w.wd, w.ignored_mask));
    }
    image::InotifyWatch* watch = state.add_watches();
    watch->set_wd(w.wd);
    watch->set_mask(w.mask);
    watch->set_path(STASIS_TRY(PathOf(w, what)));
    watch->set_ino(w.ino);
    watch->set_dev(UserDev(w.sdev));
    watch->set_handle_type(w.handle_type);
    watch->set_handle(w.handle);
  }
  std::sort(state.mutable_watches()->begin(), state.mutable_watches()->end(),
            [](const auto& a, const auto& b) { return a.wd() < b.wd(); });
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  file->mutable_state()->PackFrom(state);
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext&, const image::File& file) {
  image::InotifyState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("inotify state does not parse");
  std::string what = "inotify";
  sys::UniqueFd fd(inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!fd.valid()) return Error::Errno(what + ": inotify_init1");
  sys::UniqueFd scratch;
  std::string scratch_path;
  int next = 1;  // the wd the next watch will get
  int skipped = 0;
  for (const image::InotifyWatch& w : state.watches()) {
    if (w.wd() < next) {
      return Error::Corrupt(
          fmt::format("{}: watch {} is not in increasing wd order", what, w.wd()));
    }
    while (next < w.wd()) {
      if (!scratch.valid()) {
        scratch.reset(memfd_create("stasis-inotify-gap", MFD_CLOEXEC));
        if (!scratch.valid()) return Error::Errno(what + ": memfd_create");
        scratch_path = fmt::format("/proc/self/fd/{}", scratch.get());
      }
      if (++skipped > kMaxSkippedWds) {
        return Error::Unsupported(
            fmt::format("{}: recreating wd {} takes skipping more than {} unused wds", what, w.wd(),
                        kMaxSkippedWds));
      }
      int gap = inotify_add_watch(fd.get(), scratch_path.c_str(), IN_DELETE_SELF);
      if (gap < 0) return Error::Errno(what + ": scratch watch");
      if (inotify_rm_watch(fd.get(), gap) < 0) return Error::Errno(what + ": remove scratch watch");
      if (gap >= w.wd()) {
        return Error(ErrorCode::kFailed,
                     fmt::format("{}: the kernel gave wd {} while making room for wd {}", what, gap,
                                 w.wd()));
      }
      next = gap + 1;
    }
    // IN_DONT_FOLLOW: the path is the watched inode itself, a symlink too.
    int wd = inotify_add_watch(fd.get(), w.path().c_str(), w.mask() | IN_DONT_FOLLOW);
    if (wd < 0) {
      return Error::Errno(
          fmt::format("{}: watch {} on {} (mask {:#x})", what, w.wd(), w.path(), w.mask()));
    }
    if (wd != w.wd()) {
      return Error(ErrorCode::kFailed, fmt::format("{}: watch on {} got wd {}, the image has {}",
                                                   what, w.path(), wd, w.wd()));
    }
    next = wd + 1;
  }
  if (scratch.valid()) STASIS_TRY(Drain(fd.get(), what));
  if (fcntl(fd.get(), F_SETFL, state.flags() & kSettableFlags) < 0) {
    return Error::Errno(fmt::format("{}: F_SETFL {:#o}", what, state.flags()));
  }
  return fd;
}

const FdKind kKind = {
    .name = kName,
    .summary = "inotify: watches with their masks and descriptors",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
};

}  // namespace stasis::kinds::inotify
