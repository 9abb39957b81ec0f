/* pty_shell: a terminal server, as jupyter-server's terminals are: bash -i
 * on a pty made with forkpty(), "sleep 1000" as its foreground job, and
 * "echo ahead" typed ahead while the job runs (unread by anyone, its echo
 * unread at the master).
 * After the trigger: the echo is still there, the terminal's session is
 * bash and its foreground group the job; the server ends the job, so bash
 * reads the typed-ahead text as its next command line; the server finishes
 * it with " $((6*7)) $(tty)" and expects "ahead 42 /dev/pts/N", N being
 * the pty's index now. Then bash exits.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-selftest: selftest.pty_shell ${PROGRAM}
// bash -i on a pty with a foreground job and typed-ahead input, as a
// jupyter-server terminal.
// stasis-case: program.pty_shell ${PROGRAM}
// stasis-case: program.pty_shell.cycles3 ${PROGRAM} --cycles 3
#include "common.h"

#include <poll.h>
#include <pty.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

static int master;
static char seen[8192];
static size_t seen_len;

/* Reads the master until `token` has been seen (or timeout_ms passes). */
static int read_until(const char *token, int timeout_ms) {
  struct timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (;;) {
    seen[seen_len] = '\0';
    if (strstr(seen, token))
      return 1;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long left = timeout_ms - (now.tv_sec - start.tv_sec) * 1000 - (now.tv_nsec - start.tv_nsec) / 1000000;
    struct pollfd p = {master, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, (int)left) <= 0)
      return 0;
    if (seen_len + 1 >= sizeof seen)
      seen_len = 0; /* only the latest output matters */
    ssize_t n = read(master, seen + seen_len, sizeof seen - 1 - seen_len);
    if (n <= 0)
      return 0;
    seen_len += (size_t)n;
  }
}

int main(void) {
  install_trigger(0);
  struct winsize ws = {40, 120, 0, 0};
  pid_t bash = forkpty(&master, NULL, NULL, &ws);
  SETUP(bash >= 0, "forkpty");
  if (bash == 0) {
    setenv("TERM", "dumb", 1);
    setenv("PS1", "$ ", 1);
    unsetenv("PROMPT_COMMAND");
    if (getenv("TMPDIR")) { /* bash writes its history there on exit */
      setenv("HOME", getenv("TMPDIR"), 1);
      setenv("HISTFILE", "/dev/null", 1);
    }
    execl("/bin/bash", "bash", "--norc", "--noprofile", "-i", (char *)NULL);
    _exit(127);
  }
  SETUP(read_until("$ ", 10000), "no prompt from bash; it said '%s'", seen);
  SETUP(write(master, "sleep 1000\n", 11) == 11, "type");
  pid_t fg = bash;
  for (int i = 0; i < 500 && (fg == bash || fg <= 0); i++) { /* the job takes the terminal */
    usleep(10000);
    ioctl(master, TIOCGPGRP, &fg);
  }
  SETUP(fg != bash && fg > 0, "sleep never became the foreground job");
  SETUP(read_until("sleep 1000\r\n", 2000), "echo of the command");
  SETUP(write(master, "echo ahead", 10) == 10, "type ahead");
  int queued = 0;
  for (int i = 0; i < 500 && queued != 10; i++) {
    usleep(10000);
    ioctl(master, FIONREAD, &queued);
  }
  SETUP(queued == 10, "echo of the typed-ahead text: %d bytes", queued);
  READY();
  wait_for_trigger();

  char buf[64];
  seen_len = 0;
  ssize_t n = read(master, buf, sizeof buf);
  CHECK(n == 10 && memcmp(buf, "echo ahead", 10) == 0, "unread echo: %zd bytes '%.*s'", n, n > 0 ? (int)n : 0, buf);
  pid_t sid = -1, pgrp = -1;
  CHECK(ioctl(master, TIOCGSID, &sid) == 0 && sid == bash, "session %d, expected bash %d", sid, bash);
  CHECK(ioctl(master, TIOCGPGRP, &pgrp) == 0 && pgrp == fg, "foreground group %d, expected the job %d", pgrp, fg);
  CHECK(kill(-fg, SIGTERM) == 0, "end the job");
  usleep(200000); /* bash takes the terminal back and reads the typed-ahead text */
  const char rest[] = " $((6*7)) $(tty)\n";
  CHECK(write(master, rest, sizeof rest - 1) == sizeof rest - 1, "type the rest");
  char want[64];
  snprintf(want, sizeof want, "ahead 42 %s\r\n", ptsname(master));
  CHECK(read_until(want, 5000), "bash did not answer '%s'; it said '%s'", want, seen);
  CHECK(write(master, "exit\n", 5) == 5, "exit");
  int status = 0;
  CHECK(waitpid(bash, &status, 0) == bash, "bash did not exit");
  return FINISH();
}
