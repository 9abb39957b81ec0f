#include "migrate/convergence.h"

#include <gtest/gtest.h>

namespace stasis::migrate {
namespace {

constexpr uint64_t kMiB = 1 << 20;

TEST(Convergence, IdleTreeStopsAfterFirstRound) {
  Convergence c(300, PostcopyMode::kAuto, 50);
  // 1 GiB in 1 s: 1 MiB/ms; 2 MiB dirty -> 2 ms + 50 ms.
  Decision d = c.After({1024 * kMiB, 1000, 2 * kMiB});
  EXPECT_EQ(d.next, Next::kStopAndCopy);
  EXPECT_NEAR(d.estimated_frozen_ms, 52, 0.5);
}

TEST(Convergence, ShrinkingDirtySetGoesOnThenStops) {
  Convergence c(300, PostcopyMode::kAuto, 50);
  EXPECT_EQ(c.After({1024 * kMiB, 1000, 600 * kMiB}).next, Next::kRound);
  EXPECT_EQ(c.After({600 * kMiB, 600, 300 * kMiB}).next, Next::kRound);
  EXPECT_EQ(c.After({300 * kMiB, 300, 100 * kMiB}).next, Next::kStopAndCopy);
}

TEST(Convergence, WriterFasterThanLinkFallsBackToPostcopy) {
  Convergence c(300, PostcopyMode::kAuto, 50);
  EXPECT_EQ(c.After({1024 * kMiB, 1000, 900 * kMiB}).next, Next::kRound);
  EXPECT_EQ(c.After({900 * kMiB, 900, 900 * kMiB}).next, Next::kRound);
  Decision d = c.After({900 * kMiB, 900, 950 * kMiB});
  EXPECT_EQ(d.next, Next::kPostcopy);
  EXPECT_NE(d.why.find("post-copy"), std::string::npos);
}

TEST(Convergence, WriterAsFastAsTheLinkGivesUpThoughTheSetShrinksALittle) {
  Convergence c(300, PostcopyMode::kAuto, 50);
  // Each round sends ~700 MiB in ~7 s and finds ~85% of it dirty again:
  // the set shrinks by more than a tenth, yet slowly, at the link's cost.
  EXPECT_EQ(c.After({1024 * kMiB, 10000, 870 * kMiB}).next, Next::kRound);
  EXPECT_EQ(c.After({870 * kMiB, 8600, 740 * kMiB}).next, Next::kRound);
  EXPECT_EQ(c.After({740 * kMiB, 7300, 620 * kMiB}).next, Next::kPostcopy);
}

TEST(Convergence, NeverCopiesAnywaySayingByHowMuch) {
  Convergence c(300, PostcopyMode::kNever, 50);
  c.After({1024 * kMiB, 1000, 900 * kMiB});
  c.After({900 * kMiB, 900, 900 * kMiB});
  Decision d = c.After({900 * kMiB, 900, 900 * kMiB});
  EXPECT_EQ(d.next, Next::kStopAndCopy);
  EXPECT_NE(d.why.find("over the 300 ms budget"), std::string::npos) << d.why;
}

TEST(Convergence, AlwaysGoesToPostcopyAfterOneRound) {
  Convergence c(300, PostcopyMode::kAlways, 50);
  EXPECT_EQ(c.After({1024 * kMiB, 1000, 0}).next, Next::kPostcopy);
}

TEST(Convergence, RoundCapEndsRounds) {
  Convergence c(1, PostcopyMode::kNever, 50, 3);
  // Converging, but the budget is unreachable (fixed cost alone exceeds it).
  EXPECT_EQ(c.After({1024 * kMiB, 1000, 500 * kMiB}).next, Next::kRound);
  EXPECT_EQ(c.After({500 * kMiB, 500, 200 * kMiB}).next, Next::kRound);
  EXPECT_EQ(c.After({200 * kMiB, 200, 50 * kMiB}).next, Next::kStopAndCopy);
}

TEST(Convergence, SmallRoundsDoNotMeasureTheLink) {
  Convergence c(300, PostcopyMode::kAuto, 50);
  c.After({kMiB, 1000, 0});
  EXPECT_EQ(c.bandwidth(), 0);
}

}  // namespace
}  // namespace stasis::migrate
