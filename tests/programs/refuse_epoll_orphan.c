/* refuse_epoll_orphan: an epoll (fd 3) watches an eventfd that no fd of the
 * process holds any more: a grandchild keeps it open, so the item lives on.
 *
 * The dump must fail, naming pid, fd 3 and that no fd holds the file, and
 * leave the process untouched: after the trigger the item still reports
 * (through an eventfd write the grandchild makes on request), no tracer is
 * left and the fds are the same.
 */
// Cases (the format is in CMakeLists.txt):
// The epoll is fd 3; its item's file is held only by a grandchild.
// stasis-case: program.epoll_refuse_orphan ${PROGRAM} --expect-dump-failure [=[(?is)^(?=.*\b{pid}\b)(?=.*\bfd\W{0,3}3\b)(?=.*no fd of the task holds)]=]
// stasis-selftest: selftest.refuse_epoll_orphan ${PROGRAM}
#include "common.h"

#include <dirent.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

#define EP_FD 3 /* fixed, so the runner can look for it in the error */
#define COOKIE 0x5eedull

/* The grandchild: signals the eventfd once per byte on `ask`, exits at EOF. */
static void keeper(int efd, int ask) {
  char c;
  while (read(ask, &c, 1) == 1)
    if (write(efd, &(uint64_t){1}, 8) != 8)
      _exit(1);
  _exit(0);
}

int main(void) {
  install_trigger(SA_RESTART);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  SETUP(ep >= 0, "epoll_create1");
  SETUP(ep == EP_FD || (dup2(ep, EP_FD) == EP_FD && close(ep) == 0), "epoll at fd %d", EP_FD);
  int efd = eventfd(0, EFD_CLOEXEC), ask[2];
  SETUP(efd >= 0 && pipe(ask) == 0, "eventfd/pipe");
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = COOKIE};
  SETUP(epoll_ctl(EP_FD, EPOLL_CTL_ADD, efd, &ev) == 0, "epoll_ctl");

  pid_t child = fork();
  SETUP(child >= 0, "fork");
  if (child == 0) {
    if (fork() == 0) {
      close(ask[1]);
      keeper(efd, ask[0]);
    }
    _exit(0);
  }
  int status;
  SETUP(waitpid(child, &status, 0) == child, "waitpid");
  close(efd);
  close(ask[0]);
  int nfds = fd_count();

  READY();
  wait_for_trigger();

  CHECK(fd_count() == nfds, "%d fds open, %d before the dump", fd_count(), nfds);
  static char text[16 << 10];
  read_text("/proc/self/status", text, sizeof text);
  const char *tracer = status_field(text, "TracerPid");
  CHECK(tracer && atoi(tracer) == 0, "still traced: TracerPid %d", tracer ? atoi(tracer) : -1);
  struct epoll_event out;
  CHECK(epoll_wait(EP_FD, &out, 1, 0) == 0, "ready before the grandchild wrote");
  CHECK(write(ask[1], "x", 1) == 1, "ask the grandchild");
  int n = epoll_wait(EP_FD, &out, 1, 5000);
  CHECK(n == 1 && out.data.u64 == COOKIE, "epoll_wait: %d, cookie %#llx", n, n == 1 ? (unsigned long long)out.data.u64 : 0);
  return FINISH();
}
