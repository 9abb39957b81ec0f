// The PID 1 of a session started by `stasis run`.
//
// The launcher clones it with CLONE_NEWPID | CLONE_NEWNS (and CLONE_NEWTIME
// when the kernel has time namespaces: see run.h). It keeps only its
// stdio and the control socket, makes its mounts slaves of the host's and
// mounts a /proc of its own (so /proc inside shows the session's PIDs). It
// then waits for the launcher's go, which comes once the launcher has moved
// it into the session cgroup: so CMD and everything CMD starts are born
// inside. It fork+execs CMD (PID 2 normally), returns CMD's pidfd (or the
// exec errno) and waits for the commit. Until then it dies with the launcher
// (PDEATHSIG SIGKILL, and the kernel kills the rest of the namespace when
// its PID 1 dies), so a failed start leaves nothing behind. In a detached
// session it stops depending on the launcher at commit and calls setsid();
// in a foreground one it keeps PDEATHSIG: killing `stasis run -9` kills the
// session.
//
// After commit it reaps every process of the namespace and forwards
// SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to CMD, but only
// when they were sent by a process (si_code <= 0: kill, sigqueue, tgkill).
// Signals the kernel generates for a terminal's foreground process group
// (^C, hangup) already reach CMD directly; forwarding them too would deliver
// them twice. When CMD exits, the init SIGKILLs whatever is left in the
// namespace, reaps it, ends the session (EndSession) and exits with CMD's
// status (128 + signal number when CMD was killed).
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "sys/result.h"

namespace stasis::session {

// Signals a session's init (and a foreground `stasis run`) passes on.
sigset_t ForwardedSignals();

// Fixed before the init is cloned; it reads its copy.
struct InitConfig {
  std::vector<std::string> command;
  sigset_t command_sigmask;  // the mask CMD starts with
  bool detach = false;
  int control_fd = -1;  // SOCK_SEQPACKET end shared with the launcher
};

[[noreturn]] void InitMain(const InitConfig& config);

// How a session ends, sent to the init with the go (the name and cgroup are
// known only after the clone: the default name holds the init's host PID).
struct SessionEnd {
  std::string state_dir;  // absolute
  std::string name;
  pid_t init_pid = 0;  // host PID; inside, the init is 1
  uint64_t init_start_time = 0;
  std::string cgroup;        // "" when the session has none
  std::string cgroup_mount;  // root of the cgroup2 hierarchy
};

std::string EncodeSessionEnd(const SessionEnd& end);
Result<SessionEnd> DecodeSessionEnd(std::string_view text);

// Ends a session from its init, once nothing else is left in the namespace:
// moves the calling process to the hierarchy's root cgroup (exempt from the
// no-internal-process rule, and always there), removes the session's cgroup,
// then, under the state-directory lock, its metadata file if it still names
// this init. Problems are reported on stderr: the session is over either
// way, and `stasis ps` cleans what is left. A restore's init may call it too.
void EndSession(const SessionEnd& end);

}  // namespace stasis::session
