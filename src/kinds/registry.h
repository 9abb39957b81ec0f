// The tables of kinds. An fd kind exports its row (FdKind, fd_kind.h) from
// its own file and registry.cc lists it in one line, in match order; a
// per-process kind does the same with a ProcessKind (process_kind.h).
// The tables are constant and built at compile time: no self-registration
// (a static library drops objects nothing references) and nothing mutable.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "kinds/fd_kind.h"
#include "kinds/process_kind.h"

namespace stasis::kinds {

// In match order: the dump gives an fd to the first kind that matches it.
std::span<const FdKind* const> FdKinds();
// By FdKind::name (the image's File.kind); nullptr when none has it.
const FdKind* FindFdKind(std::string_view name);

// In the order they dump, and restore within one phase.
std::span<const ProcessKind* const> ProcessKinds();
const ProcessKind* FindProcessKind(std::string_view name);

// Runs the rows of one phase, in table order.
Status DumpProcessKinds(DumpPhase phase, const ProcessDumpInput& in, image::Process* proc);
Status RestoreProcessKinds(RestorePhase phase, RemoteTask& task, const image::Process& proc);

// The registered kinds as a markdown list, one line each: what `stasis
// kinds` prints, docs/kinds.md holds, and the README's list must match.
std::string KindsMarkdown();

// The error for an fd no kind handles, naming what the object is.
Error UnsupportedFd(const FdDumpInput& in);

}  // namespace stasis::kinds
