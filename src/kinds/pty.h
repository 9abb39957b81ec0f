// Pseudo-terminals: a /dev/ptmx master (5:2, fdinfo tty-index) and the
// /dev/pts/N slaves (136..143:*) of the same pair, all inside the tree.
//
// Carried (master's File): termios (TCGETS2, arbitrary speeds included),
// window size, lock, packet mode, both exclusive bits, the slave node's
// owner and mode, the unread data both ways (pty_queue.cc: read out of the
// frozen pair and fed back at once, since a tty queue cannot be peeked;
// canonical input keeps its line ends), whether the slave is closed, and
// the job state: the session whose controlling terminal it is and its
// foreground group, in the tree's PID namespace (pty_job.cc). Each File
// keeps its status flags.
//
// Restore: a new pair from /dev/ptmx in the restorer (the index is kept when
// it is free, else the kernel's choice: ttyname() then names the new one),
// slaves as new descriptions of it (TIOCGPTPEER); the session leader takes
// it as its controlling terminal when its slave fd is installed
// (after_install: TIOCSCTTY), then sets the foreground group once every
// group exists (after_tree: TIOCSPGRP); a locked pair is locked again last
// (after_tree on the master).
//
// A terminal outside the tree (a slave whose master is outside it, a
// console, /dev/tty) is the external terminal of a shell job: refused
// unless dump --shell-job, then replaced by the restorer's terminal
// (pty_external.cc).
//
// Refused, naming pid, fd and terminal: a master whose slave is open only
// outside the tree; the ctty of a session led from outside the tree, or by
// a leader holding no fd on it; a foreground group the leader cannot set
// (see DumpJob); a slave that comes before its master in the tree; line
// disciplines other than N_TTY; locked termios (TIOCSLCKTRMIOS); O_ASYNC
// and other unusual status flags; a hung-up slave; stopped output (^S) or a
// full output queue; a pending packet-mode status byte; EXTPROC with unread
// data. Not detected: another description of the slave held outside the
// tree while the tree holds some.
//
// Needs CAP_SYS_ADMIN (TIOCSTI feeds the queues; TIOCGPTPEER past an
// exclusive slave) on both sides; Linux 4.13+ (TIOCGPTPEER).
#pragma once

#include <vector>

#include "kinds/fd_kind.h"

namespace stasis::kinds::pty {

inline constexpr const char* kName = "pty";
bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;
Status AfterInstall(RemoteTask& task, const image::Process& proc, const image::File& file, int fd);
Status AfterTree(RemoteTask& task, const image::Process& proc, const image::File& file, int fd);

// --shell-job (pty_external.cc). Dump: whether the root's session, led
// outside the tree, has the external terminal as controlling terminal, and
// whether the root's group was in its foreground; refuses a controlling
// terminal other than the external terminal the tree holds fds on. `tree`:
// the tree's host pids; `files`: the image's Files.
Result<image::ShellJob> DumpShellJob(pid_t root, const std::vector<pid_t>& tree,
                                     const std::vector<image::File>& files);
// Restore: the restorer's stdin must be its controlling terminal, which
// the tree inherits.
Status CheckShellJobTerminal();

}  // namespace stasis::kinds::pty
