// The vdso block: [vvar], [vvar_vclock] (6.13+) and [vdso], which must stay
// together at their offsets because the vdso code reaches vvar RIP-relative.
// Restore maps a fresh block at the dumped address with
// arch_prctl(ARCH_MAP_VDSO_64). glibc caches vdso entry points, so the
// restoring kernel's vdso must be byte-identical to the dumped one;
// otherwise restore refuses (proxy trampolines are future work).
#pragma once

#include "kinds/process_kind.h"

namespace stasis::kinds::vdso {

// Fills manifest vdso_sha/vdso_size from the task's [vdso].
Status Dump(pid_t pid, const image::Process& proc, image::Manifest* manifest);
// Refuses, before anything is created, an image whose vdso block this
// kernel cannot reproduce.
Status CheckCompatible(const image::Manifest& manifest, const image::Process& proc);
// This kernel's vdso block (its shape and the hash of its code) as text: two
// hosts with the same signature can move trees between them, which a
// migration checks before anything is frozen.
Result<std::string> HostSignature();
// Maps the block at its dumped place; everything there must be unmapped.
Status Restore(RemoteTask& task, const image::Process& proc);

// Its row in the registry (registry.cc).
extern const ProcessKind kKind;

}  // namespace stasis::kinds::vdso
