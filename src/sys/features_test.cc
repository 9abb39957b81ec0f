#include "sys/features.h"

#include <gtest/gtest.h>

namespace stasis::sys {
namespace {

KernelFeatures Sample() {
  return KernelFeatures::With({{"clone3", true, true, "5.5+: set_tid"},
                               {"pidfd_getfd", false, true, "5.6+: steal fds"},
                               {"uffd WP_ASYNC", false, false, "dirty tracking"}});
}

TEST(KernelFeaturesTest, RequirePassesWhenAllPresent) {
  EXPECT_TRUE(Sample().Require({"clone3"}, "restore").ok());
  EXPECT_TRUE(Sample().Require({}, "restore").ok());
}

TEST(KernelFeaturesTest, RequireNamesEveryMissingFeature) {
  Status s = Sample().Require({"clone3", "pidfd_getfd", "kcmp"}, "dump");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kUnsupported);
  std::string text = s.error().ToString();
  EXPECT_NE(text.find("dump needs"), std::string::npos) << text;
  EXPECT_NE(text.find("pidfd_getfd (5.6+: steal fds)"), std::string::npos) << text;
  EXPECT_NE(text.find("kcmp"), std::string::npos) << text;  // never probed counts as missing
  EXPECT_EQ(text.find("clone3"), std::string::npos) << text;
}

TEST(KernelFeaturesTest, HasOnlyWhatIsPresent) {
  EXPECT_TRUE(Sample().Has("clone3"));
  EXPECT_FALSE(Sample().Has("uffd WP_ASYNC"));
  EXPECT_FALSE(Sample().Has("no such feature"));
}

}  // namespace
}  // namespace stasis::sys
