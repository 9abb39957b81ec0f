// stasis restore: read an image, refuse early what this host cannot
// reproduce, create the files, then build the task in a puppet and release
// it. A restore that fails kills everything it created.
#pragma once

#include <sys/types.h>

#include <string>

#include "sys/result.h"

namespace stasis::restore {

struct RestoreOptions {
  std::string dir;
  bool new_pid_ns = true;  // --pid-ns=host restores into the current namespace
};

struct RestoreResult {
  pid_t host_pid = 0;  // as this host sees it
  pid_t pid = 0;       // as the task sees itself
  double total_ms = 0;
  uint64_t pages = 0;
  size_t processes = 0;
};

Result<RestoreResult> Restore(const RestoreOptions& options);

}  // namespace stasis::restore
