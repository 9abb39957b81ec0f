// The per-kind state slots of DumpContext and RestoreContext.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kinds/context.h"

namespace stasis::kinds {
namespace {

struct PipeLike {
  std::vector<int> seen;
};
struct SocketLike {
  std::string name = "fresh";
};

TEST(KindStates, OneSlotPerTypeMadeOnFirstUse) {
  DumpContext ctx;
  PipeLike& first = ctx.State<PipeLike>();
  EXPECT_TRUE(first.seen.empty());
  first.seen.push_back(7);
  EXPECT_EQ(&ctx.State<PipeLike>(), &first);
  EXPECT_EQ(ctx.State<PipeLike>().seen, std::vector<int>{7});
  EXPECT_EQ(ctx.State<SocketLike>().name, "fresh");
  EXPECT_EQ(ctx.State<PipeLike>().seen.size(), 1u);
}

TEST(KindStates, ContextsDoNotShareState) {
  RestoreContext a, b;
  a.State<SocketLike>().name = "a";
  EXPECT_EQ(b.State<SocketLike>().name, "fresh");
  EXPECT_EQ(a.State<SocketLike>().name, "a");
}

}  // namespace
}  // namespace stasis::kinds
