// What every operation (dump, restore, migration) is run with, besides its
// own options: the kernel's features, probed once by the caller; where its
// messages go; whom to tell how far it got. Passed down by reference, never
// global, so an agent can run several operations in one process.
#pragma once

#include "sys/features.h"
#include "sys/log.h"

namespace stasis::sys {

struct Env {
  const KernelFeatures& features;
  Logger& log;
  ProgressFn progress;  // may be empty

  void Report(std::string_view phase, uint64_t done = 0, uint64_t total = 0) const {
    if (progress) progress(Progress{phase, done, total});
  }
};

}  // namespace stasis::sys
