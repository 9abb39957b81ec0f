/* Widowed pipe ends: a read end whose writer was closed (with unread data,
 * like the stdin jupyter_client gives every kernel, and an empty one), and a
 * write end whose reader was closed. No process holds the other end, so they
 * are carried as they are: after restore the reads give the data and then
 * EOF, and a write fails with EPIPE.
 */
// Cases (the format is in CMakeLists.txt):
// Pipe ends whose other end nobody holds (a Jupyter kernel's stdin).
// stasis-case: program.pipe_widowed ${PROGRAM}
#include "common.h"

int main(void) {
  install_trigger(0);
  int with_data[2], empty[2], no_reader[2];
  SETUP(pipe(with_data) == 0 && pipe(empty) == 0 && pipe(no_reader) == 0, "pipe");
  SETUP(write(with_data[1], "last words", 10) == 10, "write");
  close(with_data[1]);
  close(empty[1]);
  close(no_reader[0]);
  signal(SIGPIPE, SIG_IGN);
  READY();
  wait_for_trigger();

  char buf[32] = {0};
  CHECK(read(with_data[0], buf, sizeof buf) == 10 && memcmp(buf, "last words", 10) == 0, "data lost: '%s'", buf);
  CHECK(read(with_data[0], buf, sizeof buf) == 0, "no EOF after the data: a writer came back");
  CHECK(read(empty[0], buf, sizeof buf) == 0, "no EOF on the empty widowed pipe");
  errno = 0;
  CHECK(write(no_reader[1], "x", 1) < 0 && errno == EPIPE, "write to a pipe without readers: errno %d", errno);
  return FINISH();
}
