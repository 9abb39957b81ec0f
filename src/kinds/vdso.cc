#include "kinds/vdso.h"

#include <fmt/format.h>
#include <sys/syscall.h>
#include <xxhash.h>

#include "kinds/memory.h"
#include "sys/kernel_abi.h"

namespace stasis::kinds::vdso {
namespace {

using image::Vma;

struct Block {
  const Vma* vvar = nullptr;
  const Vma* vclock = nullptr;
  const Vma* vdso = nullptr;
};

Block FindBlock(const google::protobuf::RepeatedPtrField<Vma>& vmas) {
  Block b;
  for (const Vma& v : vmas) {
    if (v.kind() == Vma::VVAR) b.vvar = &v;
    if (v.kind() == Vma::VVAR_VCLOCK) b.vclock = &v;
    if (v.kind() == Vma::VDSO) b.vdso = &v;
  }
  return b;
}

// The block's shape relative to its lowest address: what must match.
std::string Shape(const Block& b) {
  uint64_t base = b.vvar ? b.vvar->start() : (b.vdso ? b.vdso->start() : 0);
  auto part = [base](const Vma* v) {
    return v ? fmt::format("+{:#x}:{:#x}", v->start() - base, v->end() - v->start())
             : std::string("-");
  };
  return fmt::format("vvar {} vvar_vclock {} vdso {}", part(b.vvar), part(b.vclock), part(b.vdso));
}

Result<image::Process> OwnLayout() {
  std::string text = STASIS_TRY(sys::proc::ReadFile("/proc/self/smaps"));
  image::Process self;
  for (const sys::proc::SmapsEntry& e : STASIS_TRY(sys::proc::ParseSmaps(text))) {
    if (!e.map.path.starts_with("[v")) continue;
    Result<Vma> vma = memory::ClassifyVma(getpid(), e);
    if (vma.ok()) *self.add_vmas() = std::move(vma).value();
  }
  return self;
}

Result<uint64_t> HashVdso(pid_t pid, const Vma& vdso) {
  std::vector<uint8_t> bytes(vdso.end() - vdso.start());
  STASIS_TRY(sys::ReadMemory(pid, vdso.start(), bytes.data(), bytes.size()));
  return XXH3_64bits(bytes.data(), bytes.size());
}

std::string HashBytes(uint64_t h) { return std::string(reinterpret_cast<const char*>(&h), 8); }

}  // namespace

Status Dump(pid_t pid, const image::Process& proc, image::Manifest* manifest) {
  Block b = FindBlock(proc.vmas());
  if (b.vdso == nullptr) return Ok();
  manifest->set_vdso_sha(HashBytes(STASIS_TRY(HashVdso(pid, *b.vdso))));
  manifest->set_vdso_size(b.vdso->end() - b.vdso->start());
  return Ok();
}

Result<std::string> HostSignature() {
  image::Process self = STASIS_TRY(OwnLayout());
  Block own = FindBlock(self.vmas());
  if (own.vdso == nullptr) return Error::Unsupported("this host has no [vdso]");
  return fmt::format("{} xxh3 {:016x}", Shape(own), STASIS_TRY(HashVdso(getpid(), *own.vdso)));
}

Status CheckCompatible(const image::Manifest& manifest, const image::Process& proc) {
  Block image_block = FindBlock(proc.vmas());
  if (image_block.vdso == nullptr) {
    return Error::Unsupported(
        fmt::format("pid {}: image has no [vdso]; restoring a task without "
                    "one is not supported",
                    proc.pid()));
  }
  image::Process self = STASIS_TRY(OwnLayout());
  Block own = FindBlock(self.vmas());
  if (own.vdso == nullptr) return Error::Unsupported("this restorer has no [vdso]");
  if (Shape(image_block) != Shape(own)) {
    return Error::Unsupported(fmt::format("vdso layout differs: image has {}, this kernel has {}",
                                          Shape(image_block), Shape(own)));
  }
  if (HashBytes(STASIS_TRY(HashVdso(getpid(), *own.vdso))) != manifest.vdso_sha()) {
    return Error::Unsupported(
        fmt::format("the [vdso] of this kernel differs from the one in the "
                    "image (dumped on {}); restoring across kernels is not "
                    "supported yet",
                    manifest.kernel_release()));
  }
  return Ok();
}

Status Restore(RemoteTask& task, const image::Process& proc) {
  Block b = FindBlock(proc.vmas());
  uint64_t base = b.vvar ? b.vvar->start() : b.vdso->start();
  STASIS_TRY_CTX(
      task.Call("arch_prctl(ARCH_MAP_VDSO_64)", SYS_arch_prctl, sys::abi::kArchMapVdso64, base),
      fmt::format("vdso block at {:#x}", base));
  // The kernel chose the block's inner layout; check it is the dumped one.
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/smaps", task.pid())));
  image::Process now;
  for (const sys::proc::SmapsEntry& e : STASIS_TRY(sys::proc::ParseSmaps(text))) {
    Result<Vma> vma = memory::ClassifyVma(task.pid(), e);
    if (vma.ok() && memory::IsVdsoBlock(vma.value())) *now.add_vmas() = std::move(vma).value();
  }
  Block got = FindBlock(now.vmas());
  if (!got.vdso || got.vdso->start() != b.vdso->start() || Shape(got) != Shape(b)) {
    return Error(ErrorCode::kFailed,
                 fmt::format("vdso block mapped as {} instead of {}", Shape(got), Shape(b)));
  }
  return Ok();
}

namespace {

Status DumpRow(const ProcessDumpInput& in, image::Process* proc) {
  return Dump(in.pid, *proc, in.manifest);
}

}  // namespace

const ProcessKind kKind = {
    .name = "vdso",
    .summary =
        "The [vdso]/[vvar]/[vvar_vclock] block, moved together; refused on a kernel whose vdso "
        "differs",
    .dump_phase = DumpPhase::kAfterVmas,
    .dump = DumpRow,
    .restore_phase = RestorePhase::kMemory,
    .restore = Restore,
};

}  // namespace stasis::kinds::vdso
