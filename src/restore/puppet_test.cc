#include "restore/puppet.h"

#include <gtest/gtest.h>

namespace stasis::restore {
namespace {

image::Process WithFds(std::initializer_list<int> fds) {
  image::Process p;
  for (int fd : fds) p.add_fds()->set_fd(fd);
  return p;
}

TEST(FreeFdSlot, LowestNumberTheImageLeavesFree) {
  EXPECT_EQ(FreeFdSlot(WithFds({})), 0);
  EXPECT_EQ(FreeFdSlot(WithFds({0, 1, 2})), 3);
  EXPECT_EQ(FreeFdSlot(WithFds({2, 0, 1, 5})), 3);
  EXPECT_EQ(FreeFdSlot(WithFds({1, 2})), 0);
  EXPECT_EQ(FreeFdSlot(WithFds({0, 1, 2, 3, 4})), 5);
}

}  // namespace
}  // namespace stasis::restore
