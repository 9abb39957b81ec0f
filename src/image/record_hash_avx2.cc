// Compiled with -mavx2 (CMakeLists.txt); only called when the CPU has AVX2.
#define XXH_INLINE_ALL
#include <sys/uio.h>
#include <xxhash.h>

#include <cstdint>

namespace stasis::image {

uint64_t RecordHashAvx2(const struct iovec* pieces, int count) {
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_64bits_reset(&state);
  for (int i = 0; i < count; ++i) XXH3_64bits_update(&state, pieces[i].iov_base, pieces[i].iov_len);
  return XXH3_64bits_digest(&state);
}

}  // namespace stasis::image
