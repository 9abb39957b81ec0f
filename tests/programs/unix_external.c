/* unix_external: a socketpair whose other end belongs to a process outside
 * the dumped tree (a helper double-forked away, so the runner adopts it).
 *
 * The dump must fail, naming the pid, fd 7 and the peer outside the tree,
 * and leave the socket as it was: the data the helper queued is still
 * there, SO_PEEK_OFF and SO_PASSCRED (which the dump uses while peeking)
 * are back, and the helper still answers.
 */
// Cases (the format is in CMakeLists.txt):
// fd 7's peer belongs to a helper outside the tree: the error names both.
// stasis-case: program.unix_external ${PROGRAM} --expect-dump-failure [=[(?is)^(?=.*\b{pid}\b)(?=.*\bfd\W{0,3}7\b)(?=.*outside the dumped tree)(?=.*held by pid)]=]
// stasis-selftest: selftest.unix_external ${PROGRAM}
#include "common.h"

#include <sys/socket.h>
#include <sys/wait.h>

#define SOCK_FD 7 /* fixed, so the runner can look for it in the error */

static void helper(int fd) {
  char buf[64];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0)
      _exit(0);
    if (n == 5 && memcmp(buf, "hello", 5) == 0) {
      send(fd, "hi", 2, 0);
      send(fd, "queued", 6, 0);
    } else if (n == 4 && memcmp(buf, "ping", 4) == 0) {
      send(fd, "pong", 4, 0);
    }
  }
}

static int get_int(int fd, int opt) {
  int v = -1000;
  socklen_t len = sizeof v;
  getsockopt(fd, SOL_SOCKET, opt, &v, &len);
  return v;
}

int main(void) {
  install_trigger(SA_RESTART);
  int sv[2];
  SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
  pid_t pid = fork();
  SETUP(pid >= 0, "fork");
  if (pid == 0) {
    if (fork() == 0) {
      close(sv[0]);
      helper(sv[1]);
    }
    _exit(0);
  }
  SETUP(waitpid(pid, NULL, 0) == pid, "waitpid");
  close(sv[1]);
  SETUP(dup2(sv[0], SOCK_FD) == SOCK_FD, "dup2");
  close(sv[0]);
  char buf[16];
  SETUP(send(SOCK_FD, "hello", 5, 0) == 5, "send");
  SETUP(recv(SOCK_FD, buf, 2, MSG_WAITALL) == 2 && memcmp(buf, "hi", 2) == 0, "helper did not answer");
  /* "queued" stays unread across the dump. */
  SETUP(recv(SOCK_FD, buf, 6, MSG_PEEK | MSG_WAITALL) == 6, "queued data");

  READY();
  wait_for_trigger();

  CHECK(get_int(SOCK_FD, SO_PEEK_OFF) == -1, "SO_PEEK_OFF left at %d", get_int(SOCK_FD, SO_PEEK_OFF));
  CHECK(get_int(SOCK_FD, SO_PASSCRED) == 0, "SO_PASSCRED left on");
  ssize_t n = recv(SOCK_FD, buf, sizeof buf, MSG_DONTWAIT);
  CHECK(n == 6 && memcmp(buf, "queued", 6) == 0, "queued data: %zd", n);
  CHECK(send(SOCK_FD, "ping", 4, 0) == 4, "send ping");
  struct timeval tv = {5, 0};
  setsockopt(SOCK_FD, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  n = recv(SOCK_FD, buf, 4, MSG_WAITALL);
  CHECK(n == 4 && memcmp(buf, "pong", 4) == 0, "helper answer: %zd", n);
  return FINISH();
}
