// `stasis run`: start a session (session.h) and, in the foreground, wait for
// it while passing on signals.
//
// Start-up, under the state-directory lock: refuse a live session of the
// same name (cleaning a gone one), clone the init (init.h) into new PID,
// mount and time namespaces (the time one with offsets 0: the session's
// clocks are then its own, and go on where it is restored), name the
// session ("s-<init host pid>" by default), make its cgroup
// MOUNT/stasis/<name> and move the init in, let the init start CMD, write
// the metadata, commit. Any failure before the commit kills the
// init (and with it the namespace) and removes the cgroup and metadata.
//
// Who cleans up: the init, when CMD exits (init.h, EndSession). A
// foreground `stasis run` checks again after reaping the init, for an init
// that was SIGKILLed; `stasis ps` and a new session of the same name clean
// what a lost detached session left.
#pragma once

#include <string>
#include <vector>

#include "session/session.h"
#include "sys/result.h"

namespace stasis::session {

struct RunOptions {
  std::vector<std::string> command;  // CMD and its arguments; searched in PATH
  std::string name;                  // "" for "s-<init host pid>"
  std::string state_dir;             // as given; made absolute here
  bool detach = false;
  // --net=isolated: its own network namespace, a veth into `bridge` ("" for
  // stasis0) and `address` ("A.B.C.D/P"; "" for the lowest free one of
  // 10.83.0.0/16). See net/isolated_net.h.
  bool net_isolated = false;
  std::string address;
  std::string bridge;
};

struct RunOutcome {
  SessionInfo info;
  // Foreground: the session's exit status (CMD's, or 128 + signal). A
  // detached session: 0 once it runs.
  int exit_code = 0;
  // Non-zero when CMD could not be started (then exit_code is 127 for
  // ENOENT, 126 otherwise, like a shell) and nothing is registered.
  int exec_errno = 0;
};

// Starts the session. Detached: returns once it runs. Foreground: waits for
// it, passing on the signals of init.h's ForwardedSignals() that a process
// sends to this one (si_code <= 0), and returns its exit status. The calling
// process must be single-threaded (the init is a fork of it). What goes
// wrong without stopping the session (no cgroup, a failed clean-up) is said
// in `log`.
Result<RunOutcome> RunSession(const RunOptions& options, Logger& log);

}  // namespace stasis::session
