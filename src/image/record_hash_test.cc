#include "image/record_hash.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <random>
#include <string>
#include <vector>

namespace stasis::image {
namespace {

// Whatever implementation the CPU gets must give libxxhash's XXH3_64bits of
// the concatenated pieces: images are read on other machines.
TEST(RecordHashTest, MatchesLibxxhashOverPieces) {
  std::mt19937 rng(7);
  for (size_t total : {0ul, 1ul, 8ul, 240ul, 241ul, 4096ul, 65536ul + 13, 4ul << 20}) {
    std::string data(total, '\0');
    for (char& c : data) c = static_cast<char>(rng());
    for (size_t cut : {size_t{0}, total / 3, total}) {
      struct iovec pieces[2] = {{data.data(), cut}, {data.data() + cut, total - cut}};
      EXPECT_EQ(RecordHash(pieces, 2), XXH3_64bits(data.data(), total))
          << "total " << total << " cut " << cut;
    }
  }
}

}  // namespace
}  // namespace stasis::image
