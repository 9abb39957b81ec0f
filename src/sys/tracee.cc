#include "sys/tracee.h"

#include <elf.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "sys/proc.h"

namespace stasis::sys {
namespace {

constexpr int kSiginfoSize = 128;
constexpr uint64_t kAllSignals = ~0ull;

// Waits for the next stop of tid; a dead task is an error.
Result<int> WaitStop(pid_t tid) {
  int status = 0;
  for (;;) {
    pid_t r = waitpid(tid, &status, __WALL);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Error::Errno(fmt::format("waitpid({})", tid));
    break;
  }
  if (WIFEXITED(status) || WIFSIGNALED(status)) {
    return Error(ErrorCode::kFailed, fmt::format("task {} exited while traced", tid));
  }
  return status;
}

bool IsEventStop(int status) { return (status >> 16) == PTRACE_EVENT_STOP; }

}  // namespace

Result<Tracee> Tracee::Seize(pid_t tid, bool kill_on_exit) {
  long options = kill_on_exit ? PTRACE_O_EXITKILL : 0;
  if (ptrace(PTRACE_SEIZE, tid, nullptr, options) < 0) {
    return Error::Errno(fmt::format("ptrace(SEIZE, {})", tid));
  }
  Tracee tracee(tid);
  if (ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) < 0) {
    return Error::Errno(fmt::format("ptrace(INTERRUPT, {})", tid));
  }
  for (;;) {
    int status = STASIS_TRY(WaitStop(tid));
    if (!WIFSTOPPED(status)) continue;
    if (IsEventStop(status)) return tracee;
    // A signal-delivery stop: the task had dequeued this signal before our
    // interrupt. Deliver it as it would have been; the interrupt trap is
    // still pending and comes next.
    int sig = WSTOPSIG(status);
    if (ptrace(PTRACE_CONT, tid, nullptr, sig) < 0) {
      return Error::Errno(fmt::format("ptrace(CONT, {}, sig {})", tid, sig));
    }
  }
}

Tracee::Tracee(Tracee&& other) noexcept : tid_(std::exchange(other.tid_, -1)) {}

Tracee& Tracee::operator=(Tracee&& other) noexcept {
  if (this != &other) {
    (void)Detach();
    tid_ = std::exchange(other.tid_, -1);
  }
  return *this;
}

Tracee::~Tracee() { (void)Detach(); }

Status Tracee::Detach() {
  if (tid_ < 0) return Ok();
  pid_t tid = std::exchange(tid_, -1);
  if (ptrace(PTRACE_DETACH, tid, nullptr, nullptr) < 0 && errno != ESRCH) {
    return Error::Errno(fmt::format("ptrace(DETACH, {})", tid));
  }
  return Ok();
}

Result<Regs> Tracee::GetRegs() const {
  Regs regs;
  struct iovec iov = {&regs, sizeof(regs)};
  if (ptrace(PTRACE_GETREGSET, tid_, abi::kNtPrstatus, &iov) < 0) {
    return Error::Errno(fmt::format("ptrace(GETREGSET NT_PRSTATUS, {})", tid_));
  }
  return regs;
}

Status Tracee::SetRegs(const Regs& regs) const {
  Regs copy = regs;
  struct iovec iov = {&copy, sizeof(copy)};
  if (ptrace(PTRACE_SETREGSET, tid_, abi::kNtPrstatus, &iov) < 0) {
    return Error::Errno(fmt::format("ptrace(SETREGSET NT_PRSTATUS, {})", tid_));
  }
  return Ok();
}

Result<std::vector<uint8_t>> Tracee::GetXstate() const {
  // Large enough for any xsave layout the kernel exports today (AMX is ~11 KiB).
  std::vector<uint8_t> buf(16384);
  struct iovec iov = {buf.data(), buf.size()};
  if (ptrace(PTRACE_GETREGSET, tid_, abi::kNtX86Xstate, &iov) < 0) {
    return Error::Errno(fmt::format("ptrace(GETREGSET NT_X86_XSTATE, {})", tid_));
  }
  buf.resize(iov.iov_len);
  return buf;
}

Status Tracee::SetXstate(const std::vector<uint8_t>& xstate) const {
  std::vector<uint8_t> copy = xstate;
  struct iovec iov = {copy.data(), copy.size()};
  if (ptrace(PTRACE_SETREGSET, tid_, abi::kNtX86Xstate, &iov) < 0) {
    return Error::Errno(fmt::format("ptrace(SETREGSET NT_X86_XSTATE, {})", tid_));
  }
  return Ok();
}

Result<uint64_t> Tracee::GetSigmask() const {
  uint64_t mask = 0;
  if (ptrace(PTRACE_GETSIGMASK, tid_, sizeof(mask), &mask) < 0) {
    return Error::Errno(fmt::format("ptrace(GETSIGMASK, {})", tid_));
  }
  return mask;
}

Status Tracee::SetSigmask(uint64_t mask) const {
  if (ptrace(PTRACE_SETSIGMASK, tid_, sizeof(mask), &mask) < 0) {
    return Error::Errno(fmt::format("ptrace(SETSIGMASK, {})", tid_));
  }
  return Ok();
}

Result<std::vector<std::string>> Tracee::PeekSiginfo(bool shared) const {
  std::vector<std::string> out;
  for (;;) {
    struct __ptrace_peeksiginfo_args args = {};
    args.off = out.size();
    args.flags = shared ? PTRACE_PEEKSIGINFO_SHARED : 0;
    args.nr = 32;
    char buf[32 * kSiginfoSize];
    long n = ptrace(PTRACE_PEEKSIGINFO, tid_, &args, buf);
    if (n < 0) return Error::Errno(fmt::format("ptrace(PEEKSIGINFO, {})", tid_));
    if (n == 0) break;
    for (long i = 0; i < n; ++i) out.emplace_back(buf + i * kSiginfoSize, kSiginfoSize);
  }
  return out;
}

Result<abi::PtraceRseqConfiguration> Tracee::GetRseq() const {
  abi::PtraceRseqConfiguration conf = {};
  if (ptrace(static_cast<enum __ptrace_request>(abi::kPtraceGetRseqConfiguration), tid_,
             sizeof(conf), &conf) < 0) {
    return Error::Errno(fmt::format("ptrace(GET_RSEQ_CONFIGURATION, {})", tid_));
  }
  return conf;
}

Result<pid_t> Tracee::RunSyscall() const {
  // PTRACE_SYSCALL, not PTRACE_SINGLESTEP: a tracer that dies (kill -9 of
  // stasis mid-dump) detaches its tracees without clearing a single-step
  // flag, and the task then dies of SIGTRAP at its next instruction; the
  // syscall-stop flag is cleared on that detach.
  pid_t child = 0;
  bool entered = false;
  for (;;) {
    if (ptrace(PTRACE_SYSCALL, tid_, nullptr, nullptr) < 0) {
      return Error::Errno(fmt::format("ptrace(SYSCALL, {})", tid_));
    }
    int status = STASIS_TRY(WaitStop(tid_));
    int event = status >> 16;
    bool trap = WIFSTOPPED(status) && (WSTOPSIG(status) & 0x7f) == SIGTRAP;
    if (trap && (event == PTRACE_EVENT_CLONE || event == PTRACE_EVENT_FORK ||
                 event == PTRACE_EVENT_VFORK)) {
      unsigned long msg = 0;
      if (ptrace(PTRACE_GETEVENTMSG, tid_, nullptr, &msg) < 0) {
        return Error::Errno(fmt::format("ptrace(GETEVENTMSG, {})", tid_));
      }
      child = static_cast<pid_t>(msg);
      continue;  // the syscall is not finished yet: on to its exit stop
    }
    if (!trap || event != 0) {
      return Error(
          ErrorCode::kFailed,
          fmt::format("task {}: unexpected stop 0x{:x} in an injected syscall", tid_, status));
    }
    if (!entered) {
      entered = true;  // the entry stop; the exit stop is next
      continue;
    }
    return child;
  }
}

Result<Tracee> Tracee::Adopt(pid_t tid) {
  Tracee tracee(tid);
  int status = STASIS_TRY(WaitStop(tid));
  if (!WIFSTOPPED(status)) {
    return Error(ErrorCode::kFailed, fmt::format("task {}: no initial stop", tid));
  }
  return tracee;
}

Status Tracee::SetOptions(long options) const {
  if (ptrace(PTRACE_SETOPTIONS, tid_, nullptr, options) < 0) {
    return Error::Errno(fmt::format("ptrace(SETOPTIONS, {})", tid_));
  }
  return Ok();
}

Result<Injector> Injector::Create(Tracee& tracee, uint64_t syscall_ip) {
  Regs saved = STASIS_TRY(tracee.GetRegs());
  uint64_t mask = STASIS_TRY(tracee.GetSigmask());
  STASIS_TRY(tracee.SetSigmask(kAllSignals));
  return Injector(tracee, syscall_ip, saved, mask);
}

Injector::Injector(Injector&& other) noexcept
    : tracee_(other.tracee_),
      syscall_ip_(other.syscall_ip_),
      saved_(other.saved_),
      saved_mask_(other.saved_mask_),
      finished_(std::exchange(other.finished_, true)),
      last_child_(other.last_child_) {}

Injector::~Injector() { (void)Finish(); }

Status Injector::Finish() {
  if (finished_) return Ok();
  finished_ = true;
  STASIS_TRY(tracee_->SetRegs(saved_));
  return tracee_->SetSigmask(saved_mask_);
}

Result<long> Injector::Raw(long nr, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                           uint64_t a6) {
  Regs regs = saved_;
  regs.rax = nr;
  regs.rdi = a1;
  regs.rsi = a2;
  regs.rdx = a3;
  regs.r10 = a4;
  regs.r8 = a5;
  regs.r9 = a6;
  // orig_rax = -1 keeps the kernel's syscall-restart logic off our registers.
  regs.orig_rax = ~0ull;
  regs.rip = syscall_ip_;
  STASIS_TRY(tracee_->SetRegs(regs));
  last_child_ = STASIS_TRY(tracee_->RunSyscall());
  Regs after = STASIS_TRY(tracee_->GetRegs());
  return static_cast<long>(after.rax);
}

Result<long> Injector::Call(const char* name, long nr, uint64_t a1, uint64_t a2, uint64_t a3,
                            uint64_t a4, uint64_t a5, uint64_t a6) {
  long r = STASIS_TRY(Raw(nr, a1, a2, a3, a4, a5, a6));
  if (r < 0 && r >= -4095) {
    return Error::FromErrno(fmt::format("pid {}: {}", tracee_->tid(), name), static_cast<int>(-r));
  }
  return r;
}

Result<uint64_t> FindSyscallInsn(pid_t pid, uint64_t start, uint64_t end) {
  std::vector<uint8_t> code(end - start);
  STASIS_TRY(ReadMemory(pid, start, code.data(), code.size()));
  for (size_t i = 0; i + 1 < code.size(); ++i) {
    if (code[i] == 0x0f && code[i + 1] == 0x05) return start + i;
  }
  return Error::NotFound(
      fmt::format("pid {}: no syscall instruction in {:#x}-{:#x}", pid, start, end));
}

Status ReadMemory(pid_t pid, uint64_t addr, void* buf, size_t len) {
  struct iovec local = {buf, len};
  struct iovec remote = {reinterpret_cast<void*>(addr), len};
  ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
  if (n < 0)
    return Error::Errno(fmt::format("pid {}: process_vm_readv({:#x}, {})", pid, addr, len));
  if (static_cast<size_t>(n) != len) {
    return Error(ErrorCode::kFailed, fmt::format("pid {}: process_vm_readv({:#x}, {}) read only {}",
                                                 pid, addr, len, n));
  }
  return Ok();
}

Status WriteMemory(pid_t pid, uint64_t addr, const void* buf, size_t len) {
  struct iovec local = {const_cast<void*>(buf), len};
  struct iovec remote = {reinterpret_cast<void*>(addr), len};
  ssize_t n = process_vm_writev(pid, &local, 1, &remote, 1, 0);
  if (n < 0) {
    return Error::Errno(fmt::format("pid {}: process_vm_writev({:#x}, {})", pid, addr, len));
  }
  if (static_cast<size_t>(n) != len) {
    return Error(
        ErrorCode::kFailed,
        fmt::format("pid {}: process_vm_writev({:#x}, {}) wrote only {}", pid, addr, len, n));
  }
  return Ok();
}

Result<std::vector<Tracee>> SeizeThreads(pid_t pid) {
  std::vector<Tracee> out;
  out.push_back(STASIS_TRY(Tracee::Seize(pid)));
  for (bool found = true; found;) {
    found = false;
    for (int tid : STASIS_TRY(proc::ListTasks(pid))) {
      bool known =
          std::any_of(out.begin(), out.end(), [tid](const Tracee& t) { return t.tid() == tid; });
      if (known) continue;
      Result<Tracee> t = Tracee::Seize(tid);
      // A thread may exit between the listing and the seize.
      if (!t.ok() && t.error().errnum() == ESRCH) continue;
      out.push_back(STASIS_TRY(std::move(t)));
      found = true;
    }
  }
  return out;
}

}  // namespace stasis::sys
