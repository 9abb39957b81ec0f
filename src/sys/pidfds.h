// pidfd_open, pidfd_getfd and kcmp: how Stasis reaches into another
// process's fd table without stopping it (5.6+; PTRACE_MODE_ATTACH_REALCREDS).
#pragma once

#include <sys/types.h>

#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::sys {

Result<UniqueFd> PidfdOpen(pid_t pid);
// A new fd in this process for the open file description behind `fd` of
// the process behind pidfd. The kernel always sets O_CLOEXEC on it.
Result<UniqueFd> PidfdGetfd(int pidfd, pid_t pid_for_errors, int fd);
// The pid behind a pidfd, as this process's PID namespace sees it
// (/proc/self/fdinfo "Pid:").
Result<pid_t> PidOfPidfd(int pidfd);
// kcmp(KCMP_FILE): true when both fds are one open file description.
Result<bool> SameFile(pid_t pid1, int fd1, pid_t pid2, int fd2);

}  // namespace stasis::sys
