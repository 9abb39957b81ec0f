// The XXH3 loop behind RecordHash, written once and compiled twice: by
// record_hash.cc for any x86-64 CPU and by record_hash_avx2.cc with -mavx2.
// Internal linkage (static, and XXH_INLINE_ALL for xxhash itself) is what
// keeps the two copies apart: with external linkage the linker could keep the
// AVX2 copy for both callers, and CPUs without AVX2 would then fault.
// Include only from those two files.
#pragma once

#define XXH_INLINE_ALL
#include <sys/uio.h>
#include <xxhash.h>

#include <cstdint>

namespace stasis::image::record_hash_impl {

static inline uint64_t HashPieces(const struct iovec* pieces, int count) {
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_64bits_reset(&state);
  for (int i = 0; i < count; ++i) XXH3_64bits_update(&state, pieces[i].iov_base, pieces[i].iov_len);
  return XXH3_64bits_digest(&state);
}

}  // namespace stasis::image::record_hash_impl
