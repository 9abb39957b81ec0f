#include "migrate/convergence.h"

#include <fmt/format.h>

namespace stasis::migrate {

namespace {

// A round this small says more about latency than about the link.
constexpr uint64_t kMinMeasuredBytes = 4u << 20;
// The dirty set must shrink by a tenth a round to count as converging, and
// two rounds in a row that do not are enough to give up.
constexpr double kShrink = 0.9;
constexpr int kStalledRounds = 2;
constexpr double kLinkBound = 0.8;

}  // namespace

Convergence::Convergence(double downtime_ms, PostcopyMode postcopy, double fixed_ms, int max_rounds)
    : downtime_ms_(downtime_ms),
      fixed_ms_(fixed_ms),
      postcopy_(postcopy),
      max_rounds_(max_rounds) {}

Decision Convergence::After(const RoundSample& round) {
  ++rounds_;
  if (round.sent_bytes >= kMinMeasuredBytes && round.ms > 0) {
    double measured = static_cast<double>(round.sent_bytes) / round.ms;
    // The latest round weighs most: the link and the tree both change.
    bandwidth_ = bandwidth_ == 0 ? measured : 0.5 * bandwidth_ + 0.5 * measured;
  }
  Decision d;
  double transfer = bandwidth_ > 0 ? static_cast<double>(round.dirty_bytes) / bandwidth_
                                   : (round.dirty_bytes == 0 ? 0 : 1e9);
  d.estimated_frozen_ms = fixed_ms_ + transfer;
  // Not converging: the dirty set did not shrink by a tenth, or the tree
  // wrote nearly as much during the round as the round could send (a
  // writer about as fast as the link: the set shrinks by little and by
  // chance, round after round, each costing the link its whole length).
  bool not_shrinking = static_cast<double>(round.dirty_bytes) > kShrink * last_dirty_;
  bool link_bound = static_cast<double>(round.dirty_bytes) > kLinkBound * round.sent_bytes;
  if (rounds_ > 1 && (not_shrinking || link_bound)) {
    ++stalled_;
  } else {
    stalled_ = 0;
  }
  last_dirty_ = round.dirty_bytes;
  if (postcopy_ == PostcopyMode::kAlways) {
    d.next = Next::kPostcopy;
    d.why = "post-copy asked for (--postcopy=always)";
    return d;
  }
  if (d.estimated_frozen_ms <= downtime_ms_) {
    d.next = Next::kStopAndCopy;
    d.why = fmt::format("estimated frozen time {:.0f} ms is within the {:.0f} ms budget",
                        d.estimated_frozen_ms, downtime_ms_);
    return d;
  }
  bool gave_up = stalled_ >= kStalledRounds || rounds_ >= max_rounds_;
  if (!gave_up) {
    d.why = fmt::format("estimated frozen time {:.0f} ms exceeds the {:.0f} ms budget",
                        d.estimated_frozen_ms, downtime_ms_);
    return d;
  }
  std::string cause =
      stalled_ >= kStalledRounds
          ? fmt::format("the tree writes {:.0f} MiB a round, faster than the link carries it",
                        round.dirty_bytes / 1048576.0)
          : fmt::format("{} rounds without getting under the budget", rounds_);
  if (postcopy_ == PostcopyMode::kAuto) {
    d.next = Next::kPostcopy;
    d.why = cause + ": switching to post-copy";
  } else {
    d.next = Next::kStopAndCopy;
    d.why = fmt::format(
        "{}: stopping and copying anyway (--postcopy=never), {:.0f} ms over the "
        "{:.0f} ms budget",
        cause, d.estimated_frozen_ms - downtime_ms_, downtime_ms_);
  }
  return d;
}

}  // namespace stasis::migrate
