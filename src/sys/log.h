// Log and progress sinks for library code.
//
// Nothing below src/cli writes to stderr: an operation (a dump, a restore, a
// migration) is given a Logger and a progress callback by whoever runs it
// (the CLI prints to stderr; an agent keeps them per operation and reports
// them over its API). A Logger may be called from several threads of one
// operation at once; implementations serialise.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace stasis {

enum class LogLevel { kDebug, kInfo, kWarning };

class Logger {
 public:
  virtual ~Logger() = default;
  virtual void Write(LogLevel level, std::string_view message) = 0;

  void Debug(std::string_view message) { Write(LogLevel::kDebug, message); }
  void Info(std::string_view message) { Write(LogLevel::kInfo, message); }
  void Warn(std::string_view message) { Write(LogLevel::kWarning, message); }
};

// Drops everything: for callers that want no messages (tests, probes).
class NullLogger final : public Logger {
 public:
  void Write(LogLevel, std::string_view) override {}
};

// Keeps every message, for tests and for an agent's per-operation log.
class MemoryLogger final : public Logger {
 public:
  void Write(LogLevel level, std::string_view message) override {
    std::lock_guard<std::mutex> hold(mu_);
    lines_.emplace_back(level, std::string(message));
  }
  std::vector<std::pair<LogLevel, std::string>> lines() const {
    std::lock_guard<std::mutex> hold(mu_);
    return lines_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<LogLevel, std::string>> lines_;
};

// Where an operation is. `phase` is one word that means the same thing in
// logs, progress events and metrics ("freeze", "collect", "pages", "files",
// "tree", "release"...); bytes count the page data moved so far, and
// bytes_total is 0 while unknown.
struct Progress {
  std::string_view phase;
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
};

using ProgressFn = std::function<void(const Progress&)>;

}  // namespace stasis
