// The session metadata file: SessionInfo to and from JSON (format in
// session.h). Parsing never throws: a bad file is kCorrupt naming the field.
#pragma once

#include <string>
#include <string_view>

#include "session/session.h"
#include "sys/result.h"

namespace stasis::session {

inline constexpr int kMetadataVersion = 1;

// Pretty-printed, with a trailing newline. "state" is written as "running".
std::string SessionToJson(const SessionInfo& info);
// `path` only names the file in errors. `state` is left kRunning.
Result<SessionInfo> SessionFromJson(std::string_view text, const std::string& path);
// "2025-01-31T12:00:00Z".
std::string FormatUtc(int64_t unix_seconds);

}  // namespace stasis::session
