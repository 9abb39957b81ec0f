// When pre-copy stops: after each round, the frozen time a switch-over would
// take now is estimated from what is dirty (it must cross the link while the
// tree is frozen) and the link's measured speed, plus the fixed cost of a
// switch-over (freeze, collect, restore). Rounds go on while that estimate
// exceeds the downtime budget and the dirty set still shrinks; a tree that
// writes faster than the link carries never gets under the budget, and
// then post-copy (or, when refused, a stop-and-copy over budget) ends it.
// QEMU decides the same way (migration/ram.c: bandwidth x downtime limit).
#pragma once

#include <cstdint>
#include <string>

namespace stasis::migrate {

enum class PostcopyMode { kAuto, kNever, kAlways };

struct RoundSample {
  uint64_t sent_bytes = 0;
  double ms = 0;             // wall time of the round: reading and sending
  uint64_t dirty_bytes = 0;  // written during the round: what is left to send
};

enum class Next { kRound, kStopAndCopy, kPostcopy };

struct Decision {
  Next next = Next::kRound;
  double estimated_frozen_ms = 0;
  std::string why;  // for the log and the summary
};

class Convergence {
 public:
  // fixed_ms: the switch-over's cost that does not depend on dirty pages.
  Convergence(double downtime_ms, PostcopyMode postcopy, double fixed_ms, int max_rounds = 30);
  Decision After(const RoundSample& round);
  // Bytes per millisecond, once a round has measured it (0 before).
  double bandwidth() const { return bandwidth_; }
  int rounds() const { return rounds_; }

 private:
  double downtime_ms_, fixed_ms_;
  PostcopyMode postcopy_;
  int max_rounds_;
  int rounds_ = 0;
  double bandwidth_ = 0;
  uint64_t last_dirty_ = 0;
  int stalled_ = 0;  // rounds in a row whose dirty set did not shrink enough
};

}  // namespace stasis::migrate
