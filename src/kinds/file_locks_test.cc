#include "kinds/file_locks.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdlib>

#include "fd_kinds.pb.h"
#include "kinds/regular_file.h"
#include "sys/proc.h"

namespace stasis::kinds::file_locks {
namespace {

TEST(ParseLockLine, HeldPosix) {
  Result<LockLine> line = ParseLockLine("1: POSIX  ADVISORY  WRITE 3040 fe:00:10952903 0 EOF");
  ASSERT_TRUE(line.ok()) << line.error().ToString();
  EXPECT_EQ(line->id, 1);
  EXPECT_FALSE(line->blocked);
  EXPECT_EQ(line->lock_class, "POSIX");
  EXPECT_EQ(line->type, "WRITE");
  EXPECT_EQ(line->pid, 3040);
  EXPECT_TRUE(line->has_inode);
  EXPECT_EQ(line->dev_major, 0xfeu);
  EXPECT_EQ(line->dev_minor, 0u);
  EXPECT_EQ(line->ino, 10952903u);
  EXPECT_EQ(line->start, 0u);
  EXPECT_TRUE(line->to_eof);
}

TEST(ParseLockLine, OfdRangeAndHexMinor) {
  Result<LockLine> line = ParseLockLine("12: OFDLCK ADVISORY  READ -1 00:1a3:77 100 104");
  ASSERT_TRUE(line.ok()) << line.error().ToString();
  EXPECT_EQ(line->lock_class, "OFDLCK");
  EXPECT_EQ(line->type, "READ");
  EXPECT_EQ(line->pid, -1);
  EXPECT_EQ(line->dev_minor, 0x1a3u);
  EXPECT_EQ(line->start, 100u);
  EXPECT_FALSE(line->to_eof);
  EXPECT_EQ(line->end, 104u);
}

TEST(ParseLockLine, BlockedWaiterAndLease) {
  Result<LockLine> line = ParseLockLine("2: -> FLOCK  ADVISORY  WRITE 55 08:01:1234 0 EOF");
  ASSERT_TRUE(line.ok()) << line.error().ToString();
  EXPECT_TRUE(line->blocked);
  EXPECT_EQ(line->lock_class, "FLOCK");
  line = ParseLockLine("3: LEASE  ACTIVE    READ 55 08:01:1234 0 EOF");
  ASSERT_TRUE(line.ok()) << line.error().ToString();
  EXPECT_EQ(line->lock_class, "LEASE");
  line = ParseLockLine("4: POSIX  *NOINODE* WRITE 9 <none>:0 0 EOF");
  ASSERT_TRUE(line.ok()) << line.error().ToString();
  EXPECT_FALSE(line->has_inode);
}

TEST(ParseLockLine, Rejects) {
  for (const char* bad :
       {"", "POSIX ADVISORY WRITE 1 08:01:2 0 EOF", "x: POSIX ADVISORY WRITE 1 08:01:2 0 EOF",
        "1: POSIX ADVISORY WRITE 1 08:01:2 0", "1: POSIX ADVISORY WRITE z 08:01:2 0 EOF",
        "1: POSIX ADVISORY WRITE 1 0801 0 EOF", "1: POSIX ADVISORY WRITE 1 08:01:2 9 3",
        "1: POSIX ADVISORY WRITE 1 08:01:2 0 EOF extra"}) {
    EXPECT_FALSE(ParseLockLine(bad).ok()) << bad;
  }
}

TEST(ParseProcLocks, Fixture) {
  constexpr const char* kText =
      "1: POSIX  ADVISORY  WRITE 21961 fe:00:10993908 0 99\n"
      "1: -> POSIX  ADVISORY  WRITE 21963 fe:00:10993908 0 9\n"
      "2: POSIX  ADVISORY  READ 21961 fe:00:10993908 200 EOF\n"
      "3: FLOCK  ADVISORY  WRITE 21959 fe:00:10993938 0 EOF\n"
      "4: OFDLCK ADVISORY  READ -1 fe:00:10993922 50 59\n";
  Result<std::vector<LockLine>> lines = ParseProcLocks(kText);
  ASSERT_TRUE(lines.ok()) << lines.error().ToString();
  ASSERT_EQ(lines->size(), 5u);
  EXPECT_TRUE((*lines)[1].blocked);
  EXPECT_EQ((*lines)[1].pid, 21963);
  EXPECT_EQ((*lines)[4].end, 59u);
  EXPECT_FALSE(ParseProcLocks("1: POSIX\n").ok());
}

// A file in a fresh temp dir with the locks `setup` takes on `fd`.
class LockedFile : public testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/stasis-locks-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/f";
    fd_.reset(open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    ASSERT_TRUE(fd_.valid());
    ASSERT_EQ(ftruncate(fd_.get(), 8192), 0);
  }
  void TearDown() override {
    fd_.reset();
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }

  FdDumpInput Input() {
    FdDumpInput in;
    in.pid = getpid();
    in.fd = fd_.get();
    in.local.reset(fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0));
    EXPECT_EQ(fstat(in.local.get(), &in.st), 0);
    in.link = path_;
    Result<std::string> text = sys::proc::ReadFile(fmt::format("/proc/self/fdinfo/{}", fd_.get()));
    EXPECT_TRUE(text.ok());
    Result<sys::proc::FdInfo> info = sys::proc::ParseFdInfo(text.value());
    EXPECT_TRUE(info.ok());
    in.info = info.value();
    return in;
  }

  std::string dir_, path_;
  sys::UniqueFd fd_;
};

TEST_F(LockedFile, DumpsEachClass) {
  struct flock posix = {F_WRLCK, SEEK_SET, 10, 5, 0};
  ASSERT_EQ(fcntl(fd_.get(), F_SETLK, &posix), 0);
  struct flock ofd = {F_RDLCK, SEEK_SET, 100, 0, 0};
  ASSERT_EQ(fcntl(fd_.get(), F_OFD_SETLK, &ofd), 0);
  ASSERT_EQ(flock(fd_.get(), LOCK_SH), 0);
  DumpContext ctx;
  Result<std::vector<image::FileLock>> locks = Dump(ctx, Input());
  ASSERT_TRUE(locks.ok()) << locks.error().ToString();
  ASSERT_EQ(locks->size(), 3u);
  int seen = 0;
  for (const image::FileLock& l : *locks) {
    if (l.kind() == image::FileLock::POSIX) {
      EXPECT_TRUE(l.write());
      EXPECT_EQ(l.start(), 10u);
      EXPECT_EQ(l.length(), 5u);
      EXPECT_EQ(l.owner_pid(), getpid());
      seen |= 1;
    } else if (l.kind() == image::FileLock::OFD) {
      EXPECT_FALSE(l.write());
      EXPECT_EQ(l.start(), 100u);
      EXPECT_EQ(l.length(), 0u);  // to EOF
      seen |= 2;
    } else {
      EXPECT_FALSE(l.write());
      EXPECT_EQ(l.owner_pid(), getpid());  // we took it and hold the description
      seen |= 4;
    }
  }
  EXPECT_EQ(seen, 7);
}

TEST_F(LockedFile, RefusesLeases) {
  sys::UniqueFd ro(open(path_.c_str(), O_RDONLY | O_CLOEXEC));
  fd_ = std::move(ro);
  ASSERT_EQ(fcntl(fd_.get(), F_SETLEASE, F_RDLCK), 0) << strerror(errno);
  DumpContext ctx;
  Result<std::vector<image::FileLock>> locks = Dump(ctx, Input());
  ASSERT_FALSE(locks.ok());
  EXPECT_EQ(locks.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(locks.error().message().find("LEASE"), std::string::npos) << locks.error().message();
}

// The regular file kind carries the OFD lock to a new description: another
// description of ours then conflicts with it.
TEST_F(LockedFile, OfdLockRoundTrip) {
  struct flock ofd = {F_WRLCK, SEEK_SET, 0, 100, 0};
  ASSERT_EQ(fcntl(fd_.get(), F_OFD_SETLK, &ofd), 0);
  DumpContext ctx;
  image::File file;
  file.set_id(1);
  ASSERT_TRUE(regular_file::Dump(ctx, Input(), &file).ok());
  fd_.reset();  // the old description and its lock are gone
  RestoreContext rctx;
  Result<sys::UniqueFd> restored = regular_file::Restore(rctx, file);
  ASSERT_TRUE(restored.ok()) << restored.error().ToString();
  sys::UniqueFd other(open(path_.c_str(), O_RDWR | O_CLOEXEC));
  struct flock probe = {F_WRLCK, SEEK_SET, 50, 1, 0};
  ASSERT_EQ(fcntl(other.get(), F_OFD_GETLK, &probe), 0);
  EXPECT_EQ(probe.l_type, F_WRLCK);
  EXPECT_EQ(probe.l_start, 0);
  EXPECT_EQ(probe.l_len, 100);
}

}  // namespace
}  // namespace stasis::kinds::file_locks
