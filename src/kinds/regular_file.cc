#include "kinds/regular_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <set>
#include <string>

#include "fd_kinds.pb.h"
#include "kinds/file_locks.h"

namespace stasis::kinds::regular_file {
namespace {

constexpr std::string_view kDeletedSuffix = " (deleted)";

// Flags that only matter at open time and must not be replayed.
constexpr uint32_t kOpenOnlyFlags = O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY;
// O_TMPFILE is this bit plus O_DIRECTORY; both stay in f_flags (fdinfo
// "flags" 020300002 for O_TMPFILE|O_RDWR) and would make a new file.
constexpr uint32_t kTmpfileBit = 020000000;

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
}

// Flags to reopen an existing inode with.
int ReopenFlags(const image::RegularFileState& state) {
  uint32_t flags = state.flags() & ~(kOpenOnlyFlags | kTmpfileBit);
  if (!S_ISDIR(state.mode())) flags &= ~O_DIRECTORY;
  return static_cast<int>(flags) | O_CLOEXEC;
}

// The key under which the first File of an unlinked inode is remembered:
// "unlinked:DEV:INO:" followed by its file id.
std::string UnlinkedKey(const struct stat& st) {
  return fmt::format("unlinked:{}:{}:", st.st_dev, st.st_ino);
}

// Copies the data extents of the unlinked file behind `in` (skipping holes).
Status ReadContents(const FdDumpInput& in, image::RegularFileState* state) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  // A fresh read-only description: the task's may be write-only or O_PATH.
  sys::UniqueFd fd(open(fmt::format("/proc/self/fd/{}", in.local.get()).c_str(),
                        O_RDONLY | O_CLOEXEC | O_NOATIME));
  if (!fd.valid() && errno == EPERM) {
    fd.reset(open(fmt::format("/proc/self/fd/{}", in.local.get()).c_str(), O_RDONLY | O_CLOEXEC));
  }
  if (!fd.valid()) return Error::Errno(what + ": reopen the unlinked file for reading");
  off_t size = in.st.st_size;
  uint64_t total = 0;
  off_t pos = 0;
  while (pos < size) {
    off_t data = lseek(fd.get(), pos, SEEK_DATA);
    if (data < 0 && errno == ENXIO) break;  // only a hole up to the end
    if (data < 0) return Error::Errno(what + ": SEEK_DATA");
    off_t hole = lseek(fd.get(), data, SEEK_HOLE);
    if (hole < 0) return Error::Errno(what + ": SEEK_HOLE");
    hole = std::min(hole, size);
    total += static_cast<uint64_t>(hole - data);
    if (total > kMaxUnlinkedContents) {
      return Error::Unsupported(fmt::format(
          "{}: unlinked file with more than {} MiB of data ({} bytes in size); the image carries "
          "up to {} MiB of an unlinked file's contents",
          what, kMaxUnlinkedContents >> 20, size, kMaxUnlinkedContents >> 20));
    }
    image::FileExtent* extent = state->add_extents();
    extent->set_offset(static_cast<uint64_t>(data));
    std::string* bytes = extent->mutable_data();
    bytes->resize(static_cast<size_t>(hole - data));
    size_t done = 0;
    while (done < bytes->size()) {
      ssize_t n = pread(fd.get(), bytes->data() + done, bytes->size() - done,
                        data + static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Error::Errno(fmt::format("{}: read at {}", what, data + done));
      if (n == 0) {  // shrunk meanwhile: it cannot, the tree is stopped
        return Error(ErrorCode::kFailed,
                     fmt::format("{}: unexpected end at {}", what, data + done));
      }
      done += static_cast<size_t>(n);
    }
    pos = hole;
  }
  return Ok();
}

// Unlinked files whose contents are already in the image: UnlinkedKey
// followed by the id of the File that carries them.
struct DumpState {
  std::set<std::string> unlinked;
};

Status DumpUnlinked(DumpContext& ctx, const FdDumpInput& in, image::File* file,
                    image::RegularFileState* state) {
  std::string key = UnlinkedKey(in.st);
  std::set<std::string>& unlinked = ctx.State<DumpState>().unlinked;
  auto it = unlinked.lower_bound(key);
  if (it != unlinked.end() && it->starts_with(key)) {
    state->set_same_inode_as(std::stoull(it->substr(key.size())));
    return Ok();
  }
  unlinked.insert(key + std::to_string(file->id()));
  return ReadContents(in, state);
}

// Makes a new unlinked inode in `dir`: O_TMPFILE, or where the filesystem
// has none, a file created under a free name and unlinked again.
Result<sys::UniqueFd> MakeUnlinked(const std::string& dir, int flags, const std::string& what) {
  sys::UniqueFd fd(open(dir.c_str(), flags | O_TMPFILE, 0600));
  if (fd.valid()) return fd;
  if (errno != EOPNOTSUPP && errno != EISDIR) {
    return Error::Errno(fmt::format("{}: O_TMPFILE in {}", what, dir));
  }
  for (int i = 0; i < 1000; ++i) {
    std::string name = fmt::format("{}/.stasis-unlinked-{}-{}", dir, getpid(), i);
    fd.reset(open(name.c_str(), (flags & ~O_DIRECTORY) | O_CREAT | O_EXCL, 0600));
    if (!fd.valid() && errno == EEXIST) continue;
    if (!fd.valid()) return Error::Errno(fmt::format("{}: create {}", what, name));
    if (unlink(name.c_str()) < 0) return Error::Errno(fmt::format("{}: unlink {}", what, name));
    return fd;
  }
  return Error(ErrorCode::kFailed, fmt::format("{}: no free name in {}", what, dir));
}

Status FillUnlinked(int fd, const image::RegularFileState& state, const std::string& what) {
  // Through a description of our own: the task's may be read-only, O_PATH,
  // O_APPEND (pwrite would append) or O_DIRECT (alignment).
  sys::UniqueFd w(open(fmt::format("/proc/self/fd/{}", fd).c_str(), O_WRONLY | O_CLOEXEC));
  if (!w.valid()) return Error::Errno(what + ": reopen for writing");
  for (const image::FileExtent& e : state.extents()) {
    size_t done = 0;
    while (done < e.data().size()) {
      ssize_t n = pwrite(w.get(), e.data().data() + done, e.data().size() - done,
                         static_cast<off_t>(e.offset() + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Error::Errno(fmt::format("{}: write at {}", what, e.offset() + done));
      done += static_cast<size_t>(n);
    }
  }
  if (ftruncate(w.get(), static_cast<off_t>(state.size())) < 0) {
    return Error::Errno(fmt::format("{}: ftruncate to {}", what, state.size()));
  }
  if (fchmod(w.get(), state.mode() & 07777) < 0) {
    return Error::Errno(fmt::format("{}: fchmod {:o}", what, state.mode() & 07777));
  }
  struct stat st;
  if (fstat(w.get(), &st) < 0) return Error::Errno(what + ": fstat");
  if ((st.st_uid != state.uid() || st.st_gid != state.gid()) &&
      fchown(w.get(), state.uid(), state.gid()) < 0) {
    return Error::Errno(fmt::format("{}: fchown {}:{}", what, state.uid(), state.gid()));
  }
  return Ok();
}

Result<sys::UniqueFd> RestoreUnlinked(RestoreContext& ctx, const image::RegularFileState& state,
                                      const std::string& what) {
  if (state.same_inode_as() != 0) {
    auto it = ctx.local_fds.find(state.same_inode_as());
    if (it == ctx.local_fds.end()) {
      return Error::Corrupt(fmt::format("{}: file {} with its contents is not before it", what,
                                        state.same_inode_as()));
    }
    sys::UniqueFd fd(open(fmt::format("/proc/self/fd/{}", it->second).c_str(), ReopenFlags(state)));
    if (!fd.valid()) return Error::Errno(what + ": reopen");
    return fd;
  }
  std::string dir = Dirname(state.path());
  uint32_t accmode = state.flags() & O_ACCMODE;
  sys::UniqueFd fd;
  if ((state.flags() & kTmpfileBit) && accmode != O_RDONLY && !(state.flags() & O_PATH)) {
    // Made with O_TMPFILE: make it the same way, so F_GETFL matches.
    fd = STASIS_TRY(MakeUnlinked(dir, ReopenFlags(state), what));
  } else {
    sys::UniqueFd creator = STASIS_TRY(MakeUnlinked(dir, O_RDWR | O_CLOEXEC, what));
    fd.reset(open(fmt::format("/proc/self/fd/{}", creator.get()).c_str(), ReopenFlags(state)));
    if (!fd.valid()) return Error::Errno(what + ": reopen the new inode");
  }
  STASIS_TRY(FillUnlinked(fd.get(), state, what));
  return fd;
}

}  // namespace

bool Matches(const FdDumpInput& in) {
  if (S_ISREG(in.st.st_mode) || S_ISDIR(in.st.st_mode)) return true;
  // An O_PATH fd only names a file: a FIFO's or a device's is not opened.
  return (in.info.flags & O_PATH) && in.link.starts_with("/");
}

Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  std::string path = in.link;
  bool unlinked = in.st.st_nlink == 0;
  if (unlinked && !S_ISREG(in.st.st_mode)) {
    return Error::Unsupported(
        what +
        (S_ISDIR(in.st.st_mode) ? ": a removed directory" : ": an unlinked non-regular file") +
        " is not supported");
  }
  if (path.ends_with(kDeletedSuffix)) {
    struct stat st;
    path.resize(path.size() - kDeletedSuffix.size());
    if (!unlinked && stat(in.link.c_str(), &st) == 0 && st.st_dev == in.st.st_dev &&
        st.st_ino == in.st.st_ino) {
      path = in.link;  // a file really named "... (deleted)"
    } else if (!unlinked) {
      return Error::Unsupported(fmt::format(
          "{}: the name it was opened by was removed but the file keeps {} other link(s); its "
          "current name is unknown",
          what, in.st.st_nlink));
    }
  } else if (unlinked) {
    return Error::Unsupported(what + ": unlinked, but its link does not say (deleted)");
  }
  if (path.empty() || path[0] != '/') {
    return Error::Unsupported(what + ": file is not reachable by path");
  }
  image::RegularFileState state;
  state.set_path(path);
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  state.set_pos(in.info.pos);
  state.set_size(in.st.st_size);
  state.set_mode(in.st.st_mode);
  state.set_uid(in.st.st_uid);
  state.set_gid(in.st.st_gid);
  for (image::FileLock& lock : STASIS_TRY(file_locks::Dump(ctx, in))) {
    *state.add_locks() = std::move(lock);
  }
  if (unlinked) {
    state.set_unlinked(true);
    STASIS_TRY(DumpUnlinked(ctx, in, file, &state));
  }
  file->mutable_state()->PackFrom(state);
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file) {
  image::RegularFileState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("regular file state does not parse");
  std::string what = (state.unlinked() ? "unlinked file " : "file ") + state.path();
  sys::UniqueFd fd;
  if (state.unlinked()) {
    fd = STASIS_TRY(RestoreUnlinked(ctx, state, what));
  } else {
    int flags = ReopenFlags(state);
    fd.reset(open(state.path().c_str(), flags));
    if (!fd.valid()) return Error::Errno(fmt::format("open {} (flags {:#o})", what, flags));
  }
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return Error::Errno("fstat " + what);
  if ((st.st_mode & S_IFMT) != (state.mode() & S_IFMT)) {
    return Error::Invalid(what + ": is no longer the same type of file as at dump time");
  }
  if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) != state.size()) {
    return Error::Invalid(fmt::format("{} changed size since the dump (was {} bytes, now {})", what,
                                      state.size(), st.st_size));
  }
  if (state.flags() & O_PATH) return fd;  // no offset, no locks
  if (lseek(fd.get(), static_cast<off_t>(state.pos()), SEEK_SET) < 0) {
    return Error::Errno(fmt::format("lseek {} to {}", what, state.pos()));
  }
  STASIS_TRY(file_locks::TakeOfdLocks(fd.get(), state.locks(), what));
  return fd;
}

Status AfterInstall(RemoteTask& task, const image::Process& proc, const image::File& file, int fd) {
  image::RegularFileState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("regular file state does not parse");
  return file_locks::TakeProcessLocks(task, proc, fd, state.locks());
}

const FdKind kKind = {
    .name = kName,
    .summary =
        "Regular files and directories: path, flags, offset; O_PATH, O_DIRECT, O_APPEND; deleted "
        "and O_TMPFILE files with their contents; POSIX, OFD and flock() locks",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
    .after_install = AfterInstall,
};

}  // namespace stasis::kinds::regular_file
