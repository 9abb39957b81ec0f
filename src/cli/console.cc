#include "cli/console.h"

#include <fmt/format.h>

#include <cstdio>

namespace stasis::cli {

int Fail(const Error& error) {
  fmt::print(stderr, "stasis: error: {}\n", error.ToString());
  return 1;
}

void StderrLogger::Write(LogLevel level, std::string_view message) {
  if (level == LogLevel::kDebug && !verbose_) return;
  std::lock_guard<std::mutex> hold(mu_);
  fmt::print(stderr, "stasis: {}{}\n", level == LogLevel::kWarning ? "warning: " : "", message);
}

void ProgressPrinter::Print(const Progress& p) {
  std::lock_guard<std::mutex> hold(mu_);
  auto now = std::chrono::steady_clock::now();
  bool new_phase = p.phase != phase_;
  bool last = p.bytes_total != 0 && p.bytes_done == p.bytes_total;
  if (!new_phase && !last && now - last_ < interval_) return;
  phase_ = p.phase;
  last_ = now;
  std::string bytes;
  if (p.bytes_total != 0) {
    bytes = fmt::format(" {:.1f}/{:.1f} MiB", p.bytes_done / 1048576.0, p.bytes_total / 1048576.0);
  } else if (p.bytes_done != 0) {
    bytes = fmt::format(" {:.1f} MiB", p.bytes_done / 1048576.0);
  }
  fmt::print(stderr, "stasis: progress: {}{}\n", p.phase, bytes);
}

}  // namespace stasis::cli
