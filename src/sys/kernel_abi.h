// Kernel ABI that Debian 12's linux-libc-dev (6.1) lacks or that glibc does
// not wrap. Features are detected at run time (see KernelFeatures); these are
// only the numbers.
#pragma once

#include <cstdint>

namespace stasis::sys::abi {

// x86_64 syscall numbers (stable ABI).
inline constexpr long kNrRseq = 334;
inline constexpr long kNrPidfdOpen = 434;
inline constexpr long kNrClone3 = 435;
inline constexpr long kNrCloseRange = 436;
inline constexpr long kNrPidfdGetfd = 438;
inline constexpr long kNrKcmp = 312;
inline constexpr long kNrMseal = 462;

// Restart codes a task stopped inside a syscall shows in rax
// (include/linux/errno.h, not exported to user space).
inline constexpr long kErestartSys = 512;
inline constexpr long kErestartNoIntr = 513;
inline constexpr long kErestartNoHand = 514;
inline constexpr long kErestartRestartBlock = 516;

// ptrace requests newer than glibc 2.36's <sys/ptrace.h> enum.
inline constexpr int kPtraceGetRseqConfiguration = 0x420f;
struct PtraceRseqConfiguration {
  uint64_t rseq_abi_pointer;
  uint32_t rseq_abi_size;
  uint32_t signature;
  uint32_t flags;
  uint32_t pad;
};

inline constexpr int kRseqFlagUnregister = 1;

// arch_prctl: map the vdso at a chosen address (CONFIG_CHECKPOINT_RESTORE).
inline constexpr int kArchMapVdso64 = 0x2003;

// kcmp types.
inline constexpr int kKcmpFile = 0;

// The kernel's struct sigaction for rt_sigaction (not glibc's).
struct KernelSigaction {
  uint64_t handler;
  uint64_t flags;
  uint64_t restorer;
  uint64_t mask;
};

// struct prctl_mm_map for PR_SET_MM_MAP (linux/prctl.h).
struct PrctlMmMap {
  uint64_t start_code;
  uint64_t end_code;
  uint64_t start_data;
  uint64_t end_data;
  uint64_t start_brk;
  uint64_t brk;
  uint64_t start_stack;
  uint64_t arg_start;
  uint64_t arg_end;
  uint64_t env_start;
  uint64_t env_end;
  uint64_t auxv;
  uint32_t auxv_size;
  uint32_t exe_fd;
};
inline constexpr int kPrSetMm = 35;
inline constexpr int kPrSetMmMap = 14;

// clone3's struct clone_args (v2, with set_tid).
struct CloneArgs {
  uint64_t flags;
  uint64_t pidfd;
  uint64_t child_tid;
  uint64_t parent_tid;
  uint64_t exit_signal;
  uint64_t stack;
  uint64_t stack_size;
  uint64_t tls;
  uint64_t set_tid;
  uint64_t set_tid_size;
  uint64_t cgroup;
};

// Sizes of the regsets Stasis carries.
inline constexpr int kNtX86Xstate = 0x202;
inline constexpr int kNtPrstatus = 1;

// Offsets in the xsave area's software-reserved bytes (fpregset + 464),
// where the kernel reports the xfeatures it saved (struct _fpx_sw_bytes).
inline constexpr int kXsaveSwBytesOffset = 464;
inline constexpr uint32_t kFpXstateMagic1 = 0x46505853;

// userfaultfd features newer than 6.1's <linux/userfaultfd.h>.
inline constexpr uint64_t kUffdFeatureWpUnpopulated = 1ull << 13;
inline constexpr uint64_t kUffdFeatureWpAsync = 1ull << 15;

// PAGEMAP_SCAN on /proc/PID/pagemap (6.7+, fs/proc/task_mmu.c).
struct PageRegion {
  uint64_t start;
  uint64_t end;
  uint64_t categories;
};
struct PmScanArg {
  uint64_t size;
  uint64_t flags;
  uint64_t start;
  uint64_t end;
  uint64_t walk_end;
  uint64_t vec;
  uint64_t vec_len;
  uint64_t max_pages;
  uint64_t category_inverted_mask;
  uint64_t category_mask;
  uint64_t category_anyof_mask;
  uint64_t return_mask;
};
// _IOWR('f', 16, struct pm_scan_arg)
inline constexpr unsigned long kPagemapScan =
    (3ul << 30) | (sizeof(PmScanArg) << 16) | ('f' << 8) | 16;
inline constexpr uint64_t kPageIsWritten = 1ull << 1;
inline constexpr uint64_t kPageIsPresent = 1ull << 3;
inline constexpr uint64_t kPageIsPfnZero = 1ull << 5;
inline constexpr uint64_t kPmScanCheckWpasync = 1ull << 1;

}  // namespace stasis::sys::abi
