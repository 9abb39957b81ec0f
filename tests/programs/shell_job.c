/* shell_job: a foreground job of an interactive shell, as `prog` typed at a
 * prompt. run_case.py --on-terminal starts it under a shell stand-in that
 * leads the session of a pty whose master the runner holds: fd 0 is that
 * terminal (its master outside the tree), the session is led from outside
 * the tree, and the job's group is in the foreground. fd 3 is /dev/tty.
 *
 * Dumped with --shell-job and restored with --shell-job from another
 * terminal, after the trigger it must find that other terminal: fd 0 on it,
 * as its controlling terminal (TIOCGSID on fd 0 works only on one's own),
 * its group in the foreground (the runner checks from outside that it is
 * the group of the waiting `stasis restore`), not a session leader; it writes
 * "JOB-OUT tty=NAME rows=R cols=C" through /dev/tty (the runner checks the
 * name and the size it gave that terminal) and reads the line typed back.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-selftest: selftest.shell_job ${PROGRAM} --on-terminal
// The first restore, without --shell-job, must be refused, naming it.
// stasis-case: program.shell_job ${PROGRAM} --on-terminal --dump-arg=--shell-job --restore-arg=--shell-job --inspect --expect-restore-failure=--shell-job
// Each restore on a new terminal; the job talks on the last one.
// stasis-case: program.shell_job.cycles3 ${PROGRAM} --on-terminal --dump-arg=--shell-job --restore-arg=--shell-job --cycles 3
// stasis-case: program.shell_job.refused ${PROGRAM} --on-terminal --expect-dump-failure [=[(?is)^(?=.*\b{pid}\b)(?=.*\bfd\W{0,3}0\b)(?=.*outside the dumped tree)(?=.*--shell-job)]=]
#include "common.h"

#include <sys/ioctl.h>
#include <termios.h>

int main(void) {
  install_trigger(SA_RESTART);
  SETUP(isatty(0), "fd 0 is not a terminal");
  int t = open("/dev/tty", O_RDWR);
  SETUP(t >= 0 && dup2(t, 3) == 3, "open /dev/tty");
  if (t != 3) close(t);
  pid_t sid = 0;
  SETUP(ioctl(0, TIOCGSID, &sid) == 0, "fd 0 is not the controlling terminal");
  SETUP(getsid(0) != getpid(), "a session leader: not a shell job");
  SETUP(tcgetpgrp(0) == getpgrp(), "not in the foreground");
  READY();
  wait_for_trigger();

  CHECK(isatty(0), "fd 0 is no longer a terminal");
  CHECK(ioctl(0, TIOCGSID, &sid) == 0, "fd 0 is not the controlling terminal (errno %d)", errno);
  CHECK(getsid(0) != getpid(), "became a session leader");
  CHECK(tcgetpgrp(0) == getpgrp(), "not in the foreground: %d, own group %d", (int)tcgetpgrp(0),
        (int)getpgrp());
  int fresh = open("/dev/tty", O_RDWR);
  CHECK(fresh >= 0, "no controlling terminal: /dev/tty (errno %d)", errno);
  struct winsize ws = {0, 0, 0, 0};
  CHECK(ioctl(3, TIOCGWINSZ, &ws) == 0, "TIOCGWINSZ on /dev/tty");
  char name[64] = "?";
  ttyname_r(0, name, sizeof name);
  char line[160];
  int n =
      snprintf(line, sizeof line, "JOB-OUT tty=%s rows=%d cols=%d\n", name, ws.ws_row, ws.ws_col);
  CHECK(write(3, line, n) == n, "write through /dev/tty (errno %d)", errno);
  char in[64] = {0};
  ssize_t got = read(0, in, sizeof in - 1);
  CHECK(got == 12 && memcmp(in, "typed-after\n", 12) == 0, "read from the terminal: %zd '%s'", got,
        in);
  return FINISH();
}
