// Messages between `stasis run` and its session's init over a
// SOCK_SEQPACKET socketpair: one message per call, optionally carrying one
// fd (SCM_RIGHTS). Both ends are single-threaded and strictly alternate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "sys/fd_passing.h"
#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::session {

// The start-up conversation, in order:
//   launcher -> init   go: EncodeSessionEnd() text (init.h)
//   init -> launcher   StartedMessage, with CMD's pidfd unless the fork failed
//   launcher -> init   kCommit
//   init -> launcher   kCommitAck (the init no longer dies with a detached
//                      launcher); then both close the socket.
struct StartedMessage {
  int32_t exec_errno;  // 0 when CMD runs; else why fork or exec failed
  int32_t ns_pid;      // CMD's PID inside the session
};
inline constexpr char kCommit = 'C';
inline constexpr char kCommitAck = 'A';
inline constexpr size_t kMaxGoMessage = 16384;

// The messages travel with sys/fd_passing.h.
using sys::ReceiveExactly;
using sys::ReceiveMessage;
using sys::SendMessage;

}  // namespace stasis::session
