// Restore as a library entry: it consults its Env's features first.
#include "restore/restore.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

namespace stasis::restore {
namespace {

sys::KernelFeatures ProbedWithout(std::string_view missing) {
  std::vector<sys::Feature> all = sys::KernelFeatures::Probe().all();
  for (sys::Feature& f : all) {
    if (f.name == missing) f.present = false;
  }
  return sys::KernelFeatures::With(std::move(all));
}

TEST(RestoreEnvTest, MissingFeatureIsRefusedBeforeReading) {
  sys::KernelFeatures features = ProbedWithout("clone3");
  MemoryLogger log;
  sys::Env env{features, log, {}};
  image::MemorySource empty("");
  auto result = Restore(env, RestoreOptions(), empty);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(result.error().ToString().find("clone3"), std::string::npos)
      << result.error().ToString();
}

}  // namespace
}  // namespace stasis::restore
