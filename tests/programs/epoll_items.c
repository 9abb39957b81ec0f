/* epoll_items: one epoll (O_NONBLOCK) whose interest list holds every item
 * state the epoll kind carries:
 *
 *   0xA1 P  pipe read end with data, EPOLLIN                 ready
 *   0xA2 Q  pipe read end never written, EPOLLIN|EPOLLRDHUP  idle
 *   0xA3 E  eventfd, counter 4, EPOLLIN|EPOLLET              ready once
 *   0xA4 O  eventfd, counter 1, EPOLLIN|EPOLLONESHOT         fired before the dump
 *   0xA5 W  pipe write end, EPOLLOUT|EPOLLONESHOT            ready once
 *   0xA6 D  pipe read end with data, added under fd N, then dup'ed to M and
 *           N closed                                        ready
 *   0xA7 R  idle eventfd now at number N, EPOLLIN            idle
 *   0xA8 X  idle eventfd, EPOLLIN|EPOLLEXCLUSIVE             idle
 *   0xA9 I  another epoll (higher fd: restored after ours), watching a
 *           ready eventfd                                    ready
 * After the trigger: the interest list in fdinfo (fd number, events, cookie)
 * is the one before; epoll_wait reports exactly the ready cookies, and
 * again without the edge-triggered and one-shot ones; items are keyed by
 * the numbers they were added under; the fired one-shot item re-arms.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-case: program.epoll_items ${PROGRAM} --inspect
// stasis-case: program.epoll_items.cycles3 ${PROGRAM} --cycles 3
// stasis-selftest: selftest.epoll_items ${PROGRAM}
#include "common.h"

#include <inttypes.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#define MAX_ITEMS 16

struct item {
  int tfd;
  unsigned events;
  unsigned long long data;
};

static int add(int ep, int op, int fd, uint32_t events, uint64_t cookie) {
  struct epoll_event ev = {.events = events, .data.u64 = cookie};
  return epoll_ctl(ep, op, fd, &ev);
}

static int cmp_item(const void *a, const void *b) {
  const struct item *x = a, *y = b;
  if (x->tfd != y->tfd)
    return x->tfd < y->tfd ? -1 : 1;
  if (x->data != y->data)
    return x->data < y->data ? -1 : 1;
  return x->events < y->events ? -1 : x->events > y->events;
}

/* The "tfd:" lines of ep's fdinfo, sorted; returns how many. */
static int interest_list(int ep, struct item *out) {
  char path[64], text[4096];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", ep);
  if (read_text(path, text, sizeof text) < 0)
    return -1;
  int n = 0;
  for (const char *p = strstr(text, "tfd:"); p && n < MAX_ITEMS; p = strstr(p + 1, "\ntfd:")) {
    if (*p == '\n')
      p++;
    if (sscanf(p, "tfd: %d events: %x data: %llx", &out[n].tfd, &out[n].events, &out[n].data) == 3)
      n++;
  }
  qsort(out, (size_t)n, sizeof out[0], cmp_item);
  return n;
}

/* Cookies epoll_wait reports now, sorted, as a bit set over 0xA0..0xAF. */
static unsigned ready_set(int ep) {
  struct epoll_event evs[MAX_ITEMS];
  int n = epoll_wait(ep, evs, MAX_ITEMS, 0);
  unsigned set = 0;
  for (int i = 0; i < n; i++)
    if (evs[i].data.u64 >= 0xA0 && evs[i].data.u64 <= 0xAF)
      set |= 1u << (evs[i].data.u64 - 0xA0);
    else
      set |= 1u << 16; /* a cookie nobody registered */
  return n < 0 ? ~0u : set;
}

#define BIT(cookie) (1u << ((cookie)-0xA0))

int main(void) {
  install_trigger(SA_RESTART);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  SETUP(ep >= 0, "epoll_create1");
  int p[2], q[2], w[2], d[2];
  SETUP(pipe(p) == 0 && pipe(q) == 0 && pipe(w) == 0 && pipe(d) == 0, "pipe");
  SETUP(write(p[1], "abc", 3) == 3 && write(d[1], "xy", 2) == 2, "write");
  int e = eventfd(4, EFD_CLOEXEC), o = eventfd(1, EFD_CLOEXEC), x = eventfd(0, 0);
  int inner = epoll_create1(0), inner_t = eventfd(9, 0);
  SETUP(e >= 0 && o >= 0 && x >= 0 && inner > ep && inner_t >= 0, "eventfd/epoll");

  /* O fires alone, before anything else is there to report. */
  SETUP(add(ep, EPOLL_CTL_ADD, o, EPOLLIN | EPOLLONESHOT, 0xA4) == 0, "add O");
  SETUP(ready_set(ep) == BIT(0xA4), "O did not fire");
  SETUP(add(ep, EPOLL_CTL_ADD, p[0], EPOLLIN, 0xA1) == 0, "add P");
  SETUP(add(ep, EPOLL_CTL_ADD, q[0], EPOLLIN | EPOLLRDHUP, 0xA2) == 0, "add Q");
  SETUP(add(ep, EPOLL_CTL_ADD, e, EPOLLIN | EPOLLET, 0xA3) == 0, "add E");
  SETUP(add(ep, EPOLL_CTL_ADD, w[1], EPOLLOUT | EPOLLONESHOT, 0xA5) == 0, "add W");
  int n_fd = d[0];
  SETUP(add(ep, EPOLL_CTL_ADD, n_fd, EPOLLIN, 0xA6) == 0, "add D");
  int m_fd = dup(n_fd);
  SETUP(m_fd >= 0 && close(n_fd) == 0, "dup D");
  int r = eventfd(0, EFD_CLOEXEC);
  SETUP(r == n_fd, "eventfd R took fd %d, not %d", r, n_fd);
  SETUP(add(ep, EPOLL_CTL_ADD, r, EPOLLIN, 0xA7) == 0, "add R");
  SETUP(add(ep, EPOLL_CTL_ADD, x, EPOLLIN | EPOLLEXCLUSIVE, 0xA8) == 0, "add X");
  SETUP(add(inner, EPOLL_CTL_ADD, inner_t, EPOLLIN, 0xB0) == 0, "add inner target");
  SETUP(add(ep, EPOLL_CTL_ADD, inner, EPOLLIN, 0xA9) == 0, "add I");
  SETUP(fcntl(ep, F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");

  static struct item before[MAX_ITEMS], after[MAX_ITEMS];
  int n_before = interest_list(ep, before);
  SETUP(n_before == 9, "%d items in fdinfo", n_before);

  READY();
  wait_for_trigger();

  int n_after = interest_list(ep, after);
  CHECK(n_after == n_before, "%d items after restore, %d before", n_after, n_before);
  for (int i = 0; i < n_before && i < n_after; i++)
    CHECK(memcmp(&before[i], &after[i], sizeof before[i]) == 0,
          "item %d: tfd %d events %#x data %#llx, before tfd %d events %#x data %#llx", i, after[i].tfd,
          after[i].events, after[i].data, before[i].tfd, before[i].events, before[i].data);
  CHECK(fcntl(ep, F_GETFL) & O_NONBLOCK, "epoll lost O_NONBLOCK");

  unsigned want = BIT(0xA1) | BIT(0xA3) | BIT(0xA5) | BIT(0xA6) | BIT(0xA9);
  unsigned got = ready_set(ep);
  CHECK(got == want, "first epoll_wait: cookies %#x, expected %#x (bit i = cookie 0xA0+i)", got, want);
  want = BIT(0xA1) | BIT(0xA6) | BIT(0xA9);
  got = ready_set(ep);
  CHECK(got == want, "second epoll_wait: cookies %#x, expected %#x", got, want);

  /* Keyed by (file, number added under): */
  int fds[] = {p[0], q[0], e, o, w[1], r, x, inner};
  for (unsigned i = 0; i < sizeof fds / sizeof fds[0]; i++)
    CHECK(add(ep, EPOLL_CTL_ADD, fds[i], EPOLLIN, 1) == -1 && errno == EEXIST, "re-adding fd %d did not give EEXIST",
          fds[i]);
  CHECK(add(ep, EPOLL_CTL_ADD, m_fd, EPOLLIN, 0xAE) == 0, "D under its new number M: %s", strerror(errno));
  CHECK(add(ep, EPOLL_CTL_DEL, m_fd, 0, 0) == 0, "DEL M: %s", strerror(errno));

  /* The fired one-shot item re-arms. */
  CHECK(add(ep, EPOLL_CTL_MOD, o, EPOLLIN | EPOLLONESHOT, 0xAF) == 0, "MOD O: %s", strerror(errno));
  got = ready_set(ep);
  want = BIT(0xA1) | BIT(0xA6) | BIT(0xA9) | BIT(0xAF);
  CHECK(got == want, "after re-arming O: cookies %#x, expected %#x", got, want);

  /* Edge-triggered E reports a new edge; the inner epoll drains. */
  CHECK(write(e, &(uint64_t){1}, 8) == 8, "write E");
  uint64_t v = 0;
  CHECK(read(inner_t, &v, 8) == 8 && v == 9, "inner target held %" PRIu64, v);
  got = ready_set(ep);
  want = BIT(0xA1) | BIT(0xA3) | BIT(0xA6);
  CHECK(got == want, "after a new edge on E: cookies %#x, expected %#x", got, want);
  char buf[4];
  CHECK(read(p[0], buf, sizeof buf) == 3 && memcmp(buf, "abc", 3) == 0, "P lost its data");
  CHECK(read(m_fd, buf, sizeof buf) == 2 && memcmp(buf, "xy", 2) == 0, "D lost its data");
  return FINISH();
}
