/* pty_external: fd 3 is the slave of a terminal whose master is held
 * outside the tree, like the terminal of a shell job. The dump must refuse,
 * naming the pid, the fd and the terminal; the program goes on unharmed.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-selftest: selftest.pty_external ${PROGRAM}
// fd 3 is a terminal whose master is outside the tree (criu --shell-job's case).
// stasis-case: program.pty_external ${PROGRAM} --expect-dump-failure [=[(?is)^(?=.*\b{pid}\b)(?=.*\bfd\W{0,3}3\b)(?=.*/dev/pts/\d)(?=.*master is outside)(?=.*--shell-job)]=]
#include "common.h"

#include <termios.h>
#include <sys/wait.h>

int main(void) {
  install_trigger(0);
  pid_t root = getpid();
  int name_pipe[2];
  SETUP(pipe(name_pipe) == 0, "pipe");
  pid_t x = fork();
  SETUP(x >= 0, "fork");
  if (x == 0) {
    /* The holder is a grandchild whose parent exits: it is no longer in
     * the tree, and it leaves once the root is gone. */
    if (fork() == 0) {
      close(name_pipe[0]);
      int m = posix_openpt(O_RDWR | O_NOCTTY);
      if (m < 0 || grantpt(m) < 0 || unlockpt(m) < 0)
        _exit(1);
      const char *name = ptsname(m);
      if (write(name_pipe[1], name, strlen(name) + 1) < 0)
        _exit(1);
      close(name_pipe[1]);
      while (kill(root, 0) == 0)
        usleep(50000);
      _exit(0);
    }
    _exit(0);
  }
  SETUP(waitpid(x, NULL, 0) == x, "waitpid");
  close(name_pipe[1]);
  char name[64] = {0};
  SETUP(read(name_pipe[0], name, sizeof name - 1) > 0, "read the terminal's name");
  close(name_pipe[0]);
  int s = open(name, O_RDWR | O_NOCTTY);
  SETUP(s == 3, "open %s as fd 3 (got %d)", name, s);
  struct termios before, after;
  SETUP(tcgetattr(s, &before) == 0, "tcgetattr");
  READY();
  wait_for_trigger();
  CHECK(tcgetattr(s, &after) == 0 && after.c_lflag == before.c_lflag, "the terminal changed");
  return FINISH();
}
