#include <gtest/gtest.h>
#include <sys/mman.h>

#include "kinds/memory.h"

namespace stasis::kinds::memory {
namespace {

sys::proc::SmapsEntry Entry(const std::string& path, bool shared = false, uint64_t inode = 0,
                            std::vector<std::string> flags = {"rd", "wr", "mr", "mw", "me"}) {
  sys::proc::SmapsEntry e;
  e.map.start = 0x10000;
  e.map.end = 0x20000;
  e.map.read = e.map.write = true;
  e.map.shared = shared;
  e.map.inode = inode;
  e.map.path = path;
  e.vm_flags = std::move(flags);
  return e;
}

TEST(MemoryClassify, Kinds) {
  EXPECT_EQ(ClassifyVma(1, Entry("")).value().kind(), image::Vma::ANON);
  EXPECT_EQ(ClassifyVma(1, Entry("[heap]")).value().kind(), image::Vma::ANON);
  EXPECT_EQ(ClassifyVma(1, Entry("[stack]")).value().kind(), image::Vma::ANON);
  EXPECT_EQ(ClassifyVma(1, Entry("[anon:name]")).value().kind(), image::Vma::ANON);
  EXPECT_EQ(ClassifyVma(1, Entry("[vdso]")).value().kind(), image::Vma::VDSO);
  EXPECT_EQ(ClassifyVma(1, Entry("[vvar]")).value().kind(), image::Vma::VVAR);
  EXPECT_EQ(ClassifyVma(1, Entry("[vvar_vclock]")).value().kind(), image::Vma::VVAR_VCLOCK);
  EXPECT_EQ(ClassifyVma(1, Entry("[vsyscall]")).value().kind(), image::Vma::VSYSCALL);
  image::Vma file = ClassifyVma(1, Entry("/usr/lib/libc.so.6", false, 1234)).value();
  EXPECT_EQ(file.kind(), image::Vma::FILE);
  EXPECT_EQ(file.prot(), static_cast<uint32_t>(PROT_READ | PROT_WRITE));
  EXPECT_EQ(file.file_ino(), 1234u);
  EXPECT_EQ(ClassifyVma(1, Entry("/dev/zero (deleted)", true, 7)).value().kind(),
            image::Vma::SHMEM);
  EXPECT_EQ(ClassifyVma(1, Entry("/dev/shm/sem.x (deleted)", true, 7)).value().kind(),
            image::Vma::SHMEM);
  EXPECT_EQ(ClassifyVma(1, Entry("/memfd:x (deleted)", true, 7)).value().kind(), image::Vma::SHMEM);
}

void ExpectRefused(const sys::proc::SmapsEntry& e, const std::string& why) {
  Result<image::Vma> r = ClassifyVma(42, e);
  ASSERT_FALSE(r.ok()) << e.map.path;
  EXPECT_EQ(r.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(r.error().message().find("pid 42"), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find(why), std::string::npos) << r.error().message();
}

TEST(MemoryClassify, RefusesWhatItCannotCarry) {
  ExpectRefused(Entry("", true), "shared anonymous");
  ExpectRefused(Entry("/memfd:x (deleted)", false, 5), "memfd");
  ExpectRefused(Entry("/tmp/f (deleted)", false, 9), "deleted");
  ExpectRefused(Entry("/SYSV00000000 (deleted)", true, 9), "SysV");
  ExpectRefused(Entry("", false, 0, {"rd", "wr", "ht"}), "hugetlbfs");
  ExpectRefused(Entry("", false, 0, {"rd", "wr", "um"}), "userfaultfd");
  ExpectRefused(Entry("", false, 0, {"rd", "sl"}), "sealed");
  ExpectRefused(Entry("/dev/mem", true, 3, {"rd", "pf", "io"}), "device memory");
  ExpectRefused(Entry("[uprobes]"), "not supported");
}

}  // namespace
}  // namespace stasis::kinds::memory
