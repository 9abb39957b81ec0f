#include "sys/features.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/capability.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sys/kernel_abi.h"
#include "sys/proc.h"

namespace stasis::sys {
namespace {

bool HasCap(int cap) {
  __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (syscall(SYS_capget, &header, data) < 0) return false;
  return data[cap / 32].effective & (1u << (cap % 32));
}

// A syscall is present when it fails with anything but ENOSYS.
bool SyscallExists(long nr, long a1, long a2, long a3) {
  errno = 0;
  long r = syscall(nr, a1, a2, a3, 0, 0, 0);
  if (r >= 0 && nr == abi::kNrPidfdOpen) close(static_cast<int>(r));
  return !(r < 0 && errno == ENOSYS);
}

std::string ReadTrimmed(const std::string& path) {
  Result<std::string> text = proc::ReadFile(path);
  if (!text.ok()) return "";
  std::string s = text.value();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

bool ProcessVmReadvWorks() {
  char src[8] = "stasis", dst[8] = {};
  struct iovec l = {dst, sizeof(dst)}, r = {src, sizeof(src)};
  return process_vm_readv(getpid(), &l, 1, &r, 1, 0) == sizeof(src) && strcmp(dst, src) == 0;
}

bool UserfaultfdFeatures(uint64_t* features) {
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0) return false;
  struct uffdio_api api = {UFFD_API, 0, 0};
  bool ok = ioctl(fd, UFFDIO_API, &api) == 0;
  close(fd);
  *features = api.features;
  return ok;
}

}  // namespace

KernelFeatures KernelFeatures::Probe() {
  KernelFeatures k;
  auto add = [&k](std::string name, bool present, bool required, std::string detail) {
    k.features_.push_back({std::move(name), present, required, std::move(detail)});
  };
  struct utsname u;
  uname(&u);
  add("kernel", true, false, fmt::format("{} {}", u.sysname, u.release));
  add("CAP_SYS_PTRACE", HasCap(CAP_SYS_PTRACE), true, "seize tasks, read their memory");
  add("CAP_CHECKPOINT_RESTORE", HasCap(CAP_CHECKPOINT_RESTORE), true,
      "clone3 set_tid, PR_SET_MM_MAP exe, map_files");
  add("CAP_SYS_ADMIN", HasCap(CAP_SYS_ADMIN), true, "PID and mount namespaces for restore");
  add("CAP_SYS_RESOURCE", HasCap(CAP_SYS_RESOURCE), false,
      "without it, hard rlimits above the restorer's are lowered at restore");
  add("pidfd_open", SyscallExists(abi::kNrPidfdOpen, getpid(), 0, 0), true, "5.3+");
  add("pidfd_getfd", SyscallExists(abi::kNrPidfdGetfd, -1, 0, 0), true, "5.6+: steal fds");
  add("clone3", SyscallExists(abi::kNrClone3, 0, 0, 0), true, "5.5+: set_tid");
  add("kcmp", SyscallExists(abi::kNrKcmp, getpid(), getpid(), abi::kKcmpFile), true,
      "find shared open files");
  add("process_vm_readv", ProcessVmReadvWorks(), true, "page copy");
  add("rseq", SyscallExists(abi::kNrRseq, 0, 0, 0), false, "4.18+");
  add("PR_SET_MM_MAP",
      prctl(abi::kPrSetMm, 15 /* PR_SET_MM_MAP_SIZE */, 0, 0, 0) == 0 || errno != EINVAL, true,
      "CONFIG_CHECKPOINT_RESTORE");
  struct stat st;
  add("/proc/PID/map_files", stat("/proc/self/map_files", &st) == 0, true,
      "CONFIG_CHECKPOINT_RESTORE");
  add("time namespaces", stat("/proc/self/ns/time", &st) == 0, false,
      "CONFIG_TIME_NS: continuous CLOCK_MONOTONIC across hosts");
  uint64_t uffd = 0;
  bool has_uffd = UserfaultfdFeatures(&uffd);
  add("userfaultfd", has_uffd, false, fmt::format("features {:#x} (lazy restore)", uffd));
  add("uffd WP_ASYNC", has_uffd && (uffd & (1 << 15)), false, "dirty tracking for live migration");
  add("cgroup v2",
      stat("/sys/fs/cgroup/unified/cgroup.controllers", &st) == 0 ||
          stat("/sys/fs/cgroup/cgroup.controllers", &st) == 0,
      false, "cgroup.freeze for sessions");
  add("pid_max", true, false, ReadTrimmed("/proc/sys/kernel/pid_max"));
  std::string yama = ReadTrimmed("/proc/sys/kernel/yama/ptrace_scope");
  add("yama ptrace_scope", yama.empty() || yama != "3", true,
      yama.empty() ? "no Yama" : "ptrace_scope " + yama);
  return k;
}

bool KernelFeatures::AllRequiredPresent() const {
  for (const Feature& f : features_) {
    if (f.required && !f.present) return false;
  }
  return true;
}

bool KernelFeatures::Has(std::string_view name) const {
  for (const Feature& f : features_) {
    if (f.name == name) return f.present;
  }
  return false;
}

Status KernelFeatures::Require(std::initializer_list<std::string_view> names,
                               std::string_view operation) const {
  std::string missing;
  for (std::string_view name : names) {
    if (Has(name)) continue;
    std::string detail;
    for (const Feature& f : features_) {
      if (f.name == name) detail = f.detail;
    }
    if (!missing.empty()) missing += ", ";
    missing += detail.empty() ? std::string(name) : fmt::format("{} ({})", name, detail);
  }
  if (missing.empty()) return Ok();
  return Error::Unsupported(fmt::format(
      "{} needs what this system lacks: {}; `stasis check` lists what it has", operation, missing));
}

KernelFeatures KernelFeatures::With(std::vector<Feature> features) {
  KernelFeatures k;
  k.features_ = std::move(features);
  return k;
}

}  // namespace stasis::sys
