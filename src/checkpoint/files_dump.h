// The open files of a whole tree: one File record per open file
// description, however many fds in however many processes share it
// (kcmp KCMP_FILE decides), and each process's fd table pointing at them.
#pragma once

#include <functional>
#include <vector>

#include "kinds/context.h"
#include "process.pb.h"
#include "sys/log.h"
#include "sys/result.h"

namespace stasis::checkpoint {

struct TreeFdsInput {
  pid_t host_pid;
  image::Process* proc;  // its fds are appended here
};

// How the tree's connections to outside peers are held (net/netlock.h).
struct FlowLocking {
  Logger& log;
  // An isolated session's host link, down, holds them all
  // (net/session_dump.h): no table is made.
  bool covered_by_link = false;
};

// Before any fd is dumped, the flows the kinds declare (FdKind::flows) are
// locked at once, for the whole tree, with `locking`.
// Also lists, once per object, where to read the contents of the
// shared-memory objects found through fds (kinds/shmem.h).
// *undo gets what must run if the tree is to keep running after all
// (DumpContext::undo_if_kept); *late what must run at the point of no return
// (DumpContext::late).
Status CollectTreeFiles(const std::vector<TreeFdsInput>& tasks, std::vector<image::File>* files,
                        std::vector<kinds::ContentSource>* contents,
                        std::vector<std::function<void()>>* undo,
                        std::vector<kinds::LateStep>* late, const kinds::DumpPolicy& policy,
                        const FlowLocking& locking);

}  // namespace stasis::checkpoint
