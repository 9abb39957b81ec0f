#include "image/record_hash.h"

#include "image/record_hash_impl.h"

namespace stasis::image {

uint64_t RecordHashAvx2(const struct iovec* pieces, int count);  // record_hash_avx2.cc

namespace {

uint64_t RecordHashGeneric(const struct iovec* pieces, int count) {
  return record_hash_impl::HashPieces(pieces, count);
}

using HashFn = uint64_t (*)(const struct iovec*, int);

HashFn Pick() { return __builtin_cpu_supports("avx2") ? RecordHashAvx2 : RecordHashGeneric; }

}  // namespace

uint64_t RecordHash(const struct iovec* pieces, int count) {
  static const HashFn fn = Pick();
  return fn(pieces, count);
}

}  // namespace stasis::image
