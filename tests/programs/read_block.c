/* read_block: dumped while blocked in read() on an empty pipe.
 *
 * The SIGUSR2 handler (SA_RESTART) writes "wake" into the pipe. The single
 * read() must then return exactly those 4 bytes: after restore the engine
 * has to resume the interrupted read transparently. An EINTR, a short or a
 * different result is a failure; there is deliberately no retry loop.
 */
// Cases (the format is in CMakeLists.txt):
// Blocked in read (0): the read must resume, not fail with EINTR.
// stasis-case: program.read_block ${PROGRAM} --expect-syscall 0
// stasis-selftest: selftest.read_block ${PROGRAM} --expect-syscall 0
#include "common.h"

static int p[2];

static void on_usr2(int sig) {
  (void)sig;
  int saved = errno;
  if (write(p[1], "wake", 4) != 4)
    _exit(3);
  errno = saved;
}

int main(void) {
  SETUP(pipe(p) == 0, "pipe");
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr2;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  SETUP(sigaction(SIGUSR2, &sa, NULL) == 0, "sigaction");

  char buf[64];
  READY();
  ssize_t r = read(p[0], buf, sizeof buf);
  int err = errno;

  CHECK(!(r < 0 && err == EINTR), "read() returned EINTR (the interrupted read was not restarted)");
  CHECK(r >= 0 || err == EINTR, "read() failed: %s", strerror(err));
  CHECK(r < 0 || r == 4, "read() returned %zd bytes, expected 4", r);
  CHECK(r != 4 || memcmp(buf, "wake", 4) == 0, "read() returned '%.4s', expected 'wake'", buf);
  return FINISH();
}
