// Where the CLI's operations speak: stderr. Library code gets these as a
// Logger and a progress callback (sys/env.h); only here do they become text,
// so stdout stays free for what a command outputs (a pid, JSON, an image).
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <string_view>

#include "sys/env.h"
#include "sys/features.h"
#include "sys/log.h"
#include "sys/result.h"

namespace stasis::cli {

// "stasis: warning: ..." for warnings, "stasis: ..." for the rest; debug
// messages only when verbose.
class StderrLogger final : public Logger {
 public:
  explicit StderrLogger(bool verbose = false) : verbose_(verbose) {}
  void Write(LogLevel level, std::string_view message) override;

 private:
  std::mutex mu_;
  bool verbose_;
};

// --progress: "stasis: progress: PHASE [DONE/TOTAL MiB]" on stderr, a line
// at each new phase and at most one per `interval` within a phase (and its
// last, when done reaches total), so a large image does not flood it.
class ProgressPrinter {
 public:
  explicit ProgressPrinter(std::chrono::milliseconds interval = std::chrono::milliseconds(250))
      : interval_(interval) {}
  void Print(const Progress& p);
  ProgressFn Callback() {
    return [this](const Progress& p) { Print(p); };
  }

 private:
  std::mutex mu_;
  std::chrono::milliseconds interval_;
  std::string phase_;
  std::chrono::steady_clock::time_point last_;
};

// "stasis: error: ..." on stderr; returns the exit code 1.
int Fail(const Error& error);

// What an operation of a command runs with (sys/env.h): the kernel's
// features, probed once, and stderr for its messages and --progress.
class CliEnv {
 public:
  explicit CliEnv(bool progress)
      : features_(sys::KernelFeatures::Probe()),
        env_{features_, log_, progress ? printer_.Callback() : ProgressFn()} {}
  const sys::Env& env() const { return env_; }

 private:
  sys::KernelFeatures features_;
  StderrLogger log_;
  ProgressPrinter printer_;
  sys::Env env_;
};

}  // namespace stasis::cli
