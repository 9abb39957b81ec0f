#include "kinds/regular_file.h"
#include "kinds/kind_testing.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fd_kinds.pb.h"
#include "sys/proc.h"

namespace stasis::kinds::regular_file {
namespace {

using fd_testing::InputFor;

class RegularFile : public testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/stasis-regular-XXXXXX";  // on disk here, not tmpfs
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const char* name : {"a", "b"}) unlink((dir_ + "/" + name).c_str());
    rmdir(dir_.c_str());
  }
  Result<image::File> DumpFd(DumpContext& ctx, int fd, uint64_t id) {
    image::File file;
    file.set_id(id);
    file.set_kind(kName);
    FdDumpInput in = InputFor(fd);
    EXPECT_TRUE(Matches(in));
    STASIS_TRY(Dump(ctx, in, &file));
    return file;
  }
  std::string dir_;
};

TEST_F(RegularFile, UnlinkedContentsHolesAndSecondDescription) {
  std::string path = dir_ + "/a";
  sys::UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(pwrite(fd.get(), "head", 4, 0), 4);
  ASSERT_EQ(pwrite(fd.get(), "tail", 4, 3 << 20), 4);
  ASSERT_EQ(fchmod(fd.get(), 0604), 0);
  ASSERT_EQ(lseek(fd.get(), 3, SEEK_SET), 3);
  ASSERT_EQ(unlink(path.c_str()), 0);
  sys::UniqueFd second(
      open(fmt::format("/proc/self/fd/{}", fd.get()).c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(second.valid());

  DumpContext ctx;
  Result<image::File> f1 = DumpFd(ctx, fd.get(), 1);
  ASSERT_TRUE(f1.ok()) << f1.error().ToString();
  Result<image::File> f2 = DumpFd(ctx, second.get(), 2);
  ASSERT_TRUE(f2.ok()) << f2.error().ToString();
  image::RegularFileState s1, s2;
  ASSERT_TRUE(f1->state().UnpackTo(&s1) && f2->state().UnpackTo(&s2));
  EXPECT_TRUE(s1.unlinked());
  EXPECT_EQ(s1.path(), path);
  EXPECT_EQ(s1.extents_size(), 2);  // the hole is not carried
  EXPECT_EQ(s2.same_inode_as(), 1u);
  EXPECT_EQ(s2.extents_size(), 0);

  RestoreContext rctx;
  Result<sys::UniqueFd> r1 = Restore(rctx, *f1);
  ASSERT_TRUE(r1.ok()) << r1.error().ToString();
  rctx.local_fds[1] = r1->get();
  Result<sys::UniqueFd> r2 = Restore(rctx, *f2);
  ASSERT_TRUE(r2.ok()) << r2.error().ToString();
  struct stat a, b;
  ASSERT_EQ(fstat(r1->get(), &a), 0);
  ASSERT_EQ(fstat(r2->get(), &b), 0);
  EXPECT_EQ(a.st_nlink, 0u);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_EQ(a.st_size, (3 << 20) + 4);
  EXPECT_EQ(a.st_mode & 07777, 0604u);
  EXPECT_LT(a.st_blocks * 512, 1 << 20);  // still sparse
  EXPECT_EQ(lseek(r1->get(), 0, SEEK_CUR), 3);
  EXPECT_EQ(fcntl(r2->get(), F_GETFL) & O_ACCMODE, O_RDONLY);
  char buf[4];
  EXPECT_EQ(pread(r2->get(), buf, 4, 3 << 20), 4);
  EXPECT_EQ(std::string(buf, 4), "tail");
  EXPECT_EQ(pread(r2->get(), buf, 4, 0), 4);
  EXPECT_EQ(std::string(buf, 4), "head");
  // Nothing was left in the directory.
  EXPECT_NE(access((dir_ + "/a").c_str(), F_OK), 0);
}

TEST_F(RegularFile, TmpfileKeepsItsFlags) {
  sys::UniqueFd fd(open(dir_.c_str(), O_TMPFILE | O_WRONLY | O_APPEND | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(write(fd.get(), "abc", 3), 3);
  int flags = fcntl(fd.get(), F_GETFL);
  DumpContext ctx;
  Result<image::File> f = DumpFd(ctx, fd.get(), 1);
  ASSERT_TRUE(f.ok()) << f.error().ToString();
  RestoreContext rctx;
  Result<sys::UniqueFd> r = Restore(rctx, *f);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(fcntl(r->get(), F_GETFL), flags);
  struct stat st;
  ASSERT_EQ(fstat(r->get(), &st), 0);
  EXPECT_EQ(st.st_size, 3);
  // O_APPEND: the contents were not written through it (they would be doubled).
  ASSERT_EQ(write(r->get(), "d", 1), 1);
  sys::UniqueFd rd(open(fmt::format("/proc/self/fd/{}", r->get()).c_str(), O_RDONLY | O_CLOEXEC));
  char buf[8] = {};
  EXPECT_EQ(read(rd.get(), buf, sizeof buf), 4);
  EXPECT_STREQ(buf, "abcd");
}

TEST_F(RegularFile, RefusesTooMuchData) {
  sys::UniqueFd fd(open(dir_.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid());
  std::string chunk(1 << 20, 'x');
  for (uint64_t done = 0; done <= kMaxUnlinkedContents; done += chunk.size()) {
    ASSERT_EQ(write(fd.get(), chunk.data(), chunk.size()), static_cast<ssize_t>(chunk.size()));
  }
  DumpContext ctx;
  Result<image::File> f = DumpFd(ctx, fd.get(), 1);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(f.error().message().find("MiB"), std::string::npos) << f.error().message();
}

TEST_F(RegularFile, RefusesARemovedNameWithOtherLinks) {
  std::string a = dir_ + "/a", b = dir_ + "/b";
  sys::UniqueFd fd(open(a.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(link(a.c_str(), b.c_str()), 0);
  ASSERT_EQ(unlink(a.c_str()), 0);
  DumpContext ctx;
  Result<image::File> f = DumpFd(ctx, fd.get(), 1);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(f.error().message().find("other link"), std::string::npos) << f.error().message();
}

TEST_F(RegularFile, OpathOfAFifoAndADirectory) {
  std::string fifo = dir_ + "/a";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  for (const std::string& path : {fifo, dir_}) {
    sys::UniqueFd fd(open(path.c_str(), O_PATH | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    DumpContext ctx;
    Result<image::File> f = DumpFd(ctx, fd.get(), 1);
    ASSERT_TRUE(f.ok()) << f.error().ToString();
    RestoreContext rctx;
    Result<sys::UniqueFd> r = Restore(rctx, *f);
    ASSERT_TRUE(r.ok()) << r.error().ToString();
    EXPECT_EQ(fcntl(r->get(), F_GETFL), fcntl(fd.get(), F_GETFL));
    struct stat x, y;
    ASSERT_EQ(fstat(r->get(), &x), 0);
    ASSERT_EQ(fstat(fd.get(), &y), 0);
    EXPECT_EQ(x.st_ino, y.st_ino);
  }
}

}  // namespace
}  // namespace stasis::kinds::regular_file
