/* epoll_wait: dumped while blocked in epoll_wait(-1).
 *
 * The epoll set watches pipe P (cookie 0x1122334455667788) and the never
 * written pipe Q (cookie 0xdeadbeef). The SIGUSR2 handler writes into P;
 * epoll_wait (retried on EINTR, as signal(7) requires of every program)
 * must report exactly P with its cookie. Then the interest list must be the
 * restored one (re-adding P or Q gives EEXIST) and epoll_ctl must work.
 */
// Cases (the format is in CMakeLists.txt):
// Blocked in epoll_wait (232) or epoll_pwait (281).
// stasis-case: program.epoll_wait ${PROGRAM} --expect-syscall 232,281
// stasis-selftest: selftest.epoll_wait ${PROGRAM} --expect-syscall 232,281
#include "common.h"

#include <sys/epoll.h>

#define COOKIE_P 0x1122334455667788ull
#define COOKIE_Q 0xdeadbeefull

static int p[2];

static void on_usr2(int sig) {
  (void)sig;
  int saved = errno;
  if (write(p[1], "ping", 4) != 4)
    _exit(3);
  errno = saved;
}

static int add(int ep, int op, int fd, uint32_t events, uint64_t cookie) {
  struct epoll_event ev = {.events = events, .data.u64 = cookie};
  return epoll_ctl(ep, op, fd, &ev);
}

int main(void) {
  int q[2];
  SETUP(pipe(p) == 0 && pipe(q) == 0, "pipe");
  int ep = epoll_create1(EPOLL_CLOEXEC);
  SETUP(ep >= 0, "epoll_create1");
  SETUP(add(ep, EPOLL_CTL_ADD, p[0], EPOLLIN, COOKIE_P) == 0, "epoll_ctl add P");
  SETUP(add(ep, EPOLL_CTL_ADD, q[0], EPOLLIN, COOKIE_Q) == 0, "epoll_ctl add Q");
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr2;
  sigemptyset(&sa.sa_mask);
  SETUP(sigaction(SIGUSR2, &sa, NULL) == 0, "sigaction");

  struct epoll_event evs[4];
  int n;
  READY();
  do
    n = epoll_wait(ep, evs, 4, -1);
  while (n < 0 && errno == EINTR);

  CHECK(n == 1, "epoll_wait returned %d (%s), expected 1 event", n, n < 0 ? strerror(errno) : "");
  if (n >= 1)
    CHECK(evs[0].data.u64 == COOKIE_P && evs[0].events == EPOLLIN, "event cookie %#llx events %#x, expected %#llx %#x",
          (unsigned long long)evs[0].data.u64, evs[0].events, COOKIE_P, (unsigned)EPOLLIN);
  char buf[8];
  CHECK(read(p[0], buf, sizeof buf) == 4 && memcmp(buf, "ping", 4) == 0, "pipe P did not hold 'ping'");

  /* The restored interest list holds P and Q. */
  CHECK(add(ep, EPOLL_CTL_ADD, p[0], EPOLLIN, 1) == -1 && errno == EEXIST, "re-adding P did not give EEXIST");
  CHECK(add(ep, EPOLL_CTL_ADD, q[0], EPOLLIN, 1) == -1 && errno == EEXIST, "re-adding Q did not give EEXIST");

  /* MOD to edge-triggered with a new cookie. */
  CHECK(add(ep, EPOLL_CTL_MOD, p[0], EPOLLIN | EPOLLET, 0x5151) == 0, "EPOLL_CTL_MOD: %s", strerror(errno));
  CHECK(epoll_wait(ep, evs, 4, 0) == 0, "events while nothing is readable");
  CHECK(write(p[1], "x", 1) == 1, "write P");
  n = epoll_wait(ep, evs, 4, 0);
  CHECK(n == 1 && evs[0].data.u64 == 0x5151, "after MOD: %d events, cookie %#llx", n,
        n > 0 ? (unsigned long long)evs[0].data.u64 : 0ull);
  CHECK(epoll_wait(ep, evs, 4, 0) == 0, "edge-triggered event reported twice");

  /* DEL, then ADD of another fd. */
  CHECK(add(ep, EPOLL_CTL_DEL, p[0], 0, 0) == 0, "EPOLL_CTL_DEL: %s", strerror(errno));
  CHECK(write(p[1], "y", 1) == 1, "write P");
  CHECK(epoll_wait(ep, evs, 4, 0) == 0, "deleted fd still reported");
  CHECK(add(ep, EPOLL_CTL_ADD, p[1], EPOLLOUT, 0x7777) == 0, "EPOLL_CTL_ADD write end: %s", strerror(errno));
  n = epoll_wait(ep, evs, 4, 0);
  CHECK(n == 1 && evs[0].data.u64 == 0x7777 && evs[0].events == EPOLLOUT, "EPOLLOUT: %d events", n);
  return FINISH();
}
