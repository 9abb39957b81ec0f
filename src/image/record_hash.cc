#include "image/record_hash.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace stasis::image {

uint64_t RecordHashAvx2(const struct iovec* pieces, int count);  // record_hash_avx2.cc

namespace {

uint64_t RecordHashGeneric(const struct iovec* pieces, int count) {
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_64bits_reset(&state);
  for (int i = 0; i < count; ++i) XXH3_64bits_update(&state, pieces[i].iov_base, pieces[i].iov_len);
  return XXH3_64bits_digest(&state);
}

using HashFn = uint64_t (*)(const struct iovec*, int);

HashFn Pick() { return __builtin_cpu_supports("avx2") ? RecordHashAvx2 : RecordHashGeneric; }

}  // namespace

uint64_t RecordHash(const struct iovec* pieces, int count) {
  static const HashFn fn = Pick();
  return fn(pieces, count);
}

}  // namespace stasis::image
