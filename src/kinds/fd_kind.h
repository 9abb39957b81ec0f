// The row an fd kind exports from its own file (`extern const FdKind kKind`
// in its header), filled with designated initializers so optional hooks are
// simply left out. registry.cc lists the rows in match order.
#pragma once

#include "kinds/context.h"

namespace stasis::kinds {

struct FdKind {
  // The File.kind the image stores; also the registry's lookup key.
  const char* name;
  // One line for `stasis kinds`, docs/kinds.md and the README: what is carried.
  const char* summary;
  // True when this kind handles the fd. Called in table order.
  bool (*matches)(const FdDumpInput& in);
  // Fills file->state. May refuse with ErrorCode::kUnsupported.
  Status (*dump)(DumpContext& ctx, const FdDumpInput& in, image::File* file);
  // Creates a new open file description in the restorer from the image.
  Result<sys::UniqueFd> (*restore)(RestoreContext& ctx, const image::File& file);
  // Restore after every kind without this flag, in image order: for kinds
  // whose state refers to other files (an epoll's targets).
  bool restore_last = false;
  // Optional, run inside a restored process right after this File was
  // installed there at fd number `fd` (once per fd): for state that belongs
  // to the process rather than the file, like POSIX record locks.
  Status (*after_install)(RemoteTask& task, const image::Process& proc, const image::File& file,
                          int fd) = nullptr;
  // Optional, run once per File after the whole tree exists (process groups
  // included), in the first live process that holds it, at fd number `fd`:
  // for state that refers to other processes, like a terminal's foreground
  // process group.
  Status (*after_tree)(RemoteTask& task, const image::Process& proc, const image::File& file,
                       int fd) = nullptr;
  // Optional, run in a session leader right after its setsid(), before its
  // children are made, with the File pulled in at a temporary fd `fd`:
  // for the controlling terminal, which the children then inherit. The task
  // has no scratch memory yet: only system calls without memory arguments.
  Status (*after_setsid)(RemoteTask& task, const image::Process& proc, const image::File& file,
                         int fd) = nullptr;
  // Optional, applies a late record (LateStep, LateRestore) this kind wrote.
  Status (*apply_late)(const LateRestore& ctx, const image::LateRecord& record) = nullptr;
  // Optional, asked of every description before any fd of the tree is
  // dumped: the connections to peers outside the tree (TCP) whose packets
  // the network lock must hold while the object is away. The dump locks
  // every flow of the tree at once (net/netlock.h), before any socket is
  // put in repair mode; the kind's dump names them again through
  // DumpContext::hold_flow.
  Result<std::vector<sys::TcpFlow>> (*flows)(DumpContext& ctx, const FdDumpInput& in) = nullptr;
};

}  // namespace stasis::kinds
