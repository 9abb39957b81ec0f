#include <gtest/gtest.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>

#include "kinds/thread.h"
#include "sys/kernel_abi.h"

namespace stasis::kinds::thread {
namespace {

sys::Regs InSyscall(long nr, long ret) {
  sys::Regs r = {};
  r.orig_rax = static_cast<uint64_t>(nr);
  r.rax = static_cast<uint64_t>(ret);
  r.rip = 0x1002;  // just after a 2-byte `syscall`
  return r;
}

TEST(ThreadResume, NotInSyscallIsUntouched) {
  sys::Regs r = InSyscall(-1, 42);
  sys::Regs out = ResumeRegs(r);
  EXPECT_EQ(out.rax, 42u);
  EXPECT_EQ(out.rip, 0x1002u);
}

TEST(ThreadResume, RestartableCallsAreReexecuted) {
  for (long code : {sys::abi::kErestartSys, sys::abi::kErestartNoIntr, sys::abi::kErestartNoHand}) {
    sys::Regs out = ResumeRegs(InSyscall(SYS_read, -code));
    EXPECT_EQ(out.rax, static_cast<uint64_t>(SYS_read)) << code;
    EXPECT_EQ(out.rip, 0x1000u) << code;
    EXPECT_EQ(out.orig_rax, ~0ull) << "kernel restart logic must stay off";
  }
}

TEST(ThreadResume, FinishedSyscallKeepsItsResult) {
  sys::Regs out = ResumeRegs(InSyscall(SYS_read, 4));
  EXPECT_EQ(out.rax, 4u);
  EXPECT_EQ(out.rip, 0x1002u);
}

TEST(ThreadResume, RelativeClockNanosleepSleepsTheRemainder) {
  sys::Regs r = InSyscall(SYS_clock_nanosleep, -sys::abi::kErestartRestartBlock);
  r.rdx = 0x5000;  // req
  r.r10 = 0x6000;  // rem, where the kernel wrote the time left
  sys::Regs out = ResumeRegs(r);
  EXPECT_EQ(out.rax, static_cast<uint64_t>(SYS_clock_nanosleep));
  EXPECT_EQ(out.rdx, 0x6000u);
  EXPECT_EQ(out.rip, 0x1000u);
}

TEST(ThreadResume, NanosleepWithoutRemSleepsTheFullRequestAgain) {
  sys::Regs r = InSyscall(SYS_nanosleep, -sys::abi::kErestartRestartBlock);
  r.rdi = 0x5000;
  r.rsi = 0;
  sys::Regs out = ResumeRegs(r);
  EXPECT_EQ(out.rax, static_cast<uint64_t>(SYS_nanosleep));
  EXPECT_EQ(out.rdi, 0x5000u);
  EXPECT_EQ(out.rip, 0x1000u);
}

TEST(ThreadResume, AbsoluteFutexWaitIsReexecuted) {
  sys::Regs r = InSyscall(SYS_futex, -sys::abi::kErestartRestartBlock);
  r.rsi = FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG;
  EXPECT_EQ(ResumeRegs(r).rip, 0x1000u);
  r.rsi = FUTEX_WAIT;  // relative timeout lived in restart_block
  EXPECT_EQ(static_cast<long>(ResumeRegs(r).rax), -EINTR);
}

TEST(ThreadResume, PollWithTimeoutGetsEintr) {
  sys::Regs out = ResumeRegs(InSyscall(SYS_poll, -sys::abi::kErestartRestartBlock));
  EXPECT_EQ(static_cast<long>(out.rax), -EINTR);
}

}  // namespace
}  // namespace stasis::kinds::thread
