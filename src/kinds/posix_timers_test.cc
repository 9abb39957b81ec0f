#include "kinds/posix_timers.h"

#include <gtest/gtest.h>
#include <signal.h>

namespace stasis::kinds::posix_timers {
namespace {

TEST(PosixTimersParse, ReadsEveryTimer) {
  std::string text =
      "ID: 8\nsignal: 14/0000000000000000\nnotify: signal/pid.15041\nClockID: 1\n"
      "ID: 7\nsignal: 35/00000000000010f2\nnotify: thread/pid.15042\nClockID: 0\n"
      "ID: 2\nsignal: 0/0000000000000000\nnotify: none/pid.15041\nClockID: 7\n";
  std::vector<image::PosixTimer> t = ParseTimers(text).value();
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[0].id(), 8);
  EXPECT_EQ(t[0].signo(), 14);
  EXPECT_EQ(t[0].notify(), SIGEV_SIGNAL);
  EXPECT_EQ(t[0].clock(), 1);
  EXPECT_EQ(t[1].sigval(), 0x10f2u);
  EXPECT_EQ(t[1].notify(), SIGEV_THREAD_ID);
  EXPECT_EQ(t[1].notify_tid(), 15042);
  EXPECT_EQ(t[2].notify(), SIGEV_NONE);
  EXPECT_EQ(t[2].clock(), 7);
}

TEST(PosixTimersParse, EmptyAndMalformed) {
  EXPECT_TRUE(ParseTimers("").value().empty());
  EXPECT_FALSE(ParseTimers("signal: 14/0\n").ok());
  EXPECT_FALSE(ParseTimers("ID: 1\nnotify: bogus/pid.1\n").ok());
}

}  // namespace
}  // namespace stasis::kinds::posix_timers
