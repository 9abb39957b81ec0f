// Memfd seals: when they go on, and a dump/restore round trip of a sealed
// memfd through the shmem kind (name, mode, seals).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fd_kinds.pb.h"
#include "kinds/kind_testing.h"
#include "kinds/shmem.h"

namespace stasis::kinds::shmem {
namespace {

TEST(ShmemSeals, WhenToSeal) {
  EXPECT_EQ(WhenToSeal(F_SEAL_WRITE | F_SEAL_SEAL, false), SealTime::kBeforeMapping);
  EXPECT_EQ(WhenToSeal(F_SEAL_GROW | F_SEAL_SHRINK, true), SealTime::kBeforeMapping);
  EXPECT_EQ(WhenToSeal(kSealFutureWrite, false), SealTime::kBeforeMapping);
  // A writable mapping made before the seal must exist before it again.
  EXPECT_EQ(WhenToSeal(kSealFutureWrite | F_SEAL_SEAL, true), SealTime::kAfterMapping);
  // With F_SEAL_WRITE no mapping may write: the seal can come first.
  EXPECT_EQ(WhenToSeal(kSealFutureWrite | F_SEAL_WRITE, true), SealTime::kBeforeMapping);
}

image::File FileFor(int fd) {
  DumpContext ctx;
  image::File file;
  file.set_id(1);
  file.set_kind(kName);
  Status s = Dump(ctx, fd_testing::InputFor(fd), &file);
  EXPECT_TRUE(s.ok()) << s.error().ToString();
  return file;
}

TEST(ShmemSeals, RoundTrip) {
  sys::UniqueFd fd(memfd_create("seal-test", MFD_ALLOW_SEALING | MFD_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(ftruncate(fd.get(), 5000), 0);
  ASSERT_EQ(fchmod(fd.get(), 0604), 0);
  ASSERT_EQ(fcntl(fd.get(), F_ADD_SEALS, F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL), 0);
  ASSERT_TRUE(Matches(fd_testing::InputFor(fd.get())));
  image::File file = FileFor(fd.get());
  image::ShmemState state;
  ASSERT_TRUE(file.state().UnpackTo(&state));
  EXPECT_EQ(state.seals(), static_cast<uint32_t>(F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL));
  EXPECT_FALSE(state.allow_sealing());
  EXPECT_EQ(state.mode(), 0604u);

  RestoreContext rctx;
  Result<sys::UniqueFd> r = Restore(rctx, file);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  // Not sealed yet: the contents still go in.
  EXPECT_EQ(fcntl(r->get(), F_GET_SEALS), 0);
  EXPECT_EQ(pwrite(r->get(), "x", 1, 0), 1);
  std::vector<image::File> files = {file};
  auto fd_of = [&](uint64_t) -> Result<int> { return r->get(); };
  ASSERT_TRUE(AddSeals(files, {}, fd_of, SealTime::kAfterMapping).ok());
  EXPECT_EQ(fcntl(r->get(), F_GET_SEALS), 0);
  Status s = AddSeals(files, {}, fd_of, SealTime::kBeforeMapping);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ(fcntl(r->get(), F_GET_SEALS), F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
  struct stat st;
  ASSERT_EQ(fstat(r->get(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0604u);
  EXPECT_EQ(st.st_size, 5000);
  std::string link = sys::proc::ReadLink("/proc/self/fd/" + std::to_string(r->get())).value();
  EXPECT_EQ(link, "/memfd:seal-test (deleted)");
}

TEST(ShmemSeals, NotSealableStaysSo) {
  sys::UniqueFd fd(memfd_create("no-sealing", MFD_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  image::File file = FileFor(fd.get());
  RestoreContext rctx;
  Result<sys::UniqueFd> r = Restore(rctx, file);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  std::vector<image::File> files = {file};
  auto fd_of = [&](uint64_t) -> Result<int> { return r->get(); };
  ASSERT_TRUE(AddSeals(files, {}, fd_of, SealTime::kBeforeMapping).ok());
  EXPECT_EQ(fcntl(r->get(), F_GET_SEALS), F_SEAL_SEAL);
}

TEST(ShmemSeals, FutureWriteOverWritableMappingWaits) {
  sys::UniqueFd fd(memfd_create("future", MFD_ALLOW_SEALING | MFD_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(ftruncate(fd.get(), 4096), 0);
  ASSERT_EQ(fcntl(fd.get(), F_ADD_SEALS, kSealFutureWrite), 0);
  image::File file = FileFor(fd.get());
  image::Process proc;
  image::Vma* vma = proc.add_vmas();
  vma->set_kind(image::Vma::SHMEM);
  vma->set_shmem_file_id(file.id());
  vma->add_vm_flags("mw");
  RestoreContext rctx;
  Result<sys::UniqueFd> r = Restore(rctx, file);
  ASSERT_TRUE(r.ok());
  std::vector<image::File> files = {file};
  auto fd_of = [&](uint64_t) -> Result<int> { return r->get(); };
  ASSERT_TRUE(AddSeals(files, {proc}, fd_of, SealTime::kBeforeMapping).ok());
  EXPECT_EQ(fcntl(r->get(), F_GET_SEALS), 0);
  // The writable mapping made now survives the seal.
  void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, r->get(), 0);
  ASSERT_NE(p, MAP_FAILED);
  ASSERT_TRUE(AddSeals(files, {proc}, fd_of, SealTime::kAfterMapping).ok());
  EXPECT_EQ(fcntl(r->get(), F_GET_SEALS), static_cast<int>(kSealFutureWrite));
  static_cast<char*>(p)[0] = 'y';
  munmap(p, 4096);
}

}  // namespace
}  // namespace stasis::kinds::shmem
