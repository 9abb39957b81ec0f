// The shared secret of a migration's two ends.
//
// `stasis migrate` and `stasis receive` authenticate each other with one
// token file that both hold (channel.h derives the TLS key from it). Whoever
// can read the file can receive a user's whole memory, so a file that others
// could read or replace is refused, not warned about.
#pragma once

#include <string>

#include "sys/result.h"

namespace stasis::migrate {

// Tokens shorter than this are guessable offline: the TLS handshake shows
// anyone on the path a value keyed by the token.
inline constexpr size_t kMinTokenBytes = 16;
// A token is a line of random text, not a file to stream.
inline constexpr size_t kMaxTokenBytes = 4096;

// The bytes of the token file at `path`, without one trailing newline (so
// `head -c 32 /dev/urandom | base64 > F` and an editor's save give the same
// token on both ends).
// Refused: a missing file (kNotFound); one that is not a regular file, empty,
// shorter than kMinTokenBytes or longer than kMaxTokenBytes (kInvalid); one
// that group or others may read or write, or that another user owns
// (kPermission). Every message names the path.
Result<std::string> ReadTokenFile(const std::string& path);

}  // namespace stasis::migrate
