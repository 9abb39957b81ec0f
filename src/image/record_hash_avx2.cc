// Compiled with -mavx2 (CMakeLists.txt); only called when the CPU has AVX2.
#include "image/record_hash_impl.h"

namespace stasis::image {

uint64_t RecordHashAvx2(const struct iovec* pieces, int count) {
  return record_hash_impl::HashPieces(pieces, count);
}

}  // namespace stasis::image
