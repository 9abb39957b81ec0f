/* timerfd: timers on every clock, armed, periodic, absolute, expired.
 *
 *   A: CLOCK_MONOTONIC, relative, one-shot, 30 s left.
 *   B: CLOCK_MONOTONIC, period 50 ms, expirations left unread (>= 2 at
 *      READY), O_NONBLOCK; B2 = dup(B).
 *   C: CLOCK_REALTIME, TFD_TIMER_ABSTIME|TFD_TIMER_CANCEL_ON_SET, deadline
 *      now + 60 s.
 *   D: CLOCK_MONOTONIC, one-shot of 1 ms that fired: 1 unread, disarmed.
 *   E: CLOCK_BOOTTIME, never armed, O_NONBLOCK.
 *   F: CLOCK_MONOTONIC, TFD_TIMER_ABSTIME, deadline now + 20 s.
 * After the trigger: clock, settime flags, period, time left (relative: no
 * more than at the dump; absolute: the same deadline), and the unread
 * expirations (B: at least as many as at READY; D: exactly 1).
 */
// Cases (the format is in CMakeLists.txt):
// stasis-selftest: selftest.timerfd ${PROGRAM}
// stasis-case: program.timerfd ${PROGRAM}
// stasis-case: program.timerfd.cycles3 ${PROGRAM} --cycles 3
#include "common.h"

#include <inttypes.h>
#include <sys/timerfd.h>

struct tinfo {
  long clockid;
  uint64_t ticks;
  long flags;
};

static struct tinfo fdinfo(int fd) {
  struct tinfo t = {-1, 0, -1};
  char path[64], text[1024];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  if (read_text(path, text, sizeof text) < 0)
    return t;
  const char *v;
  if ((v = status_field(text, "clockid")))
    t.clockid = strtol(v, NULL, 10);
  if ((v = status_field(text, "ticks")))
    t.ticks = strtoull(v, NULL, 10);
  if ((v = status_field(text, "settime flags")))
    t.flags = strtol(v, NULL, 8);
  return t;
}

static double ts(struct timespec t) { return (double)t.tv_sec + (double)t.tv_nsec / 1e9; }

static double left(int fd) {
  struct itimerspec its;
  return timerfd_gettime(fd, &its) == 0 ? ts(its.it_value) : -1;
}

static double period(int fd) {
  struct itimerspec its;
  return timerfd_gettime(fd, &its) == 0 ? ts(its.it_interval) : -1;
}

static double now(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return ts(t);
}

static int make(clockid_t c, int flags, int set_flags, double value, double interval) {
  int fd = timerfd_create(c, flags);
  SETUP(fd >= 0, "timerfd_create(%d)", c);
  if (value > 0 || interval > 0) {
    struct itimerspec its = {{(time_t)interval, (long)((interval - (time_t)interval) * 1e9)},
                             {(time_t)value, (long)((value - (time_t)value) * 1e9)}};
    SETUP(timerfd_settime(fd, set_flags, &its, NULL) == 0, "timerfd_settime");
  }
  return fd;
}

int main(void) {
  install_trigger(SA_RESTART);
  int a = make(CLOCK_MONOTONIC, 0, 0, 30, 0);
  int b = make(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC, 0, 0.05, 0.05);
  int b2 = dup(b);
  double c_deadline = (double)(time_t)now(CLOCK_REALTIME) + 60;
  int c = make(CLOCK_REALTIME, TFD_CLOEXEC, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, c_deadline, 0);
  int d = make(CLOCK_MONOTONIC, 0, 0, 0.001, 0);
  int e = make(CLOCK_BOOTTIME, TFD_NONBLOCK, 0, 0, 0);
  double f_deadline = (double)(time_t)now(CLOCK_MONOTONIC) + 20;
  int f = make(CLOCK_MONOTONIC, 0, TFD_TIMER_ABSTIME, f_deadline, 0);
  usleep(160 * 1000);
  left(b); /* folds the missed periods into the count */
  uint64_t b_ticks = fdinfo(b).ticks;
  SETUP(b_ticks >= 2, "B: %" PRIu64 " ticks", b_ticks);
  SETUP(fdinfo(d).ticks == 1 && left(d) == 0, "D did not fire");
  double a_left = left(a);
  int fl[6] = {fcntl(a, F_GETFL), fcntl(b, F_GETFL), fcntl(c, F_GETFL), fcntl(d, F_GETFL), fcntl(e, F_GETFL),
               fcntl(f, F_GETFL)};

  READY();
  wait_for_trigger();

  int fds[6] = {a, b, c, d, e, f};
  long clocks[6] = {CLOCK_MONOTONIC, CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME,
                    CLOCK_MONOTONIC};
  long sflags[6] = {0, 0, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, 0, 0, TFD_TIMER_ABSTIME};
  for (int i = 0; i < 6; i++) {
    struct tinfo t = fdinfo(fds[i]);
    CHECK(t.clockid == clocks[i], "%c: clockid %ld, expected %ld", 'A' + i, t.clockid, clocks[i]);
    CHECK(t.flags == sflags[i], "%c: settime flags %#lo, expected %#lo", 'A' + i, t.flags, sflags[i]);
    CHECK(fcntl(fds[i], F_GETFL) == fl[i], "%c: F_GETFL %#o, before %#o", 'A' + i, fcntl(fds[i], F_GETFL), fl[i]);
  }
  CHECK(fdinfo(b2).clockid == CLOCK_MONOTONIC && fcntl(b2, F_GETFD) == 0, "B2");

  double l = left(a);
  CHECK(l > 0 && l <= a_left && l > a_left - 10, "A: %.3f s left, %.3f at READY", l, a_left);
  CHECK(period(a) == 0 && fdinfo(a).ticks == 0, "A: period %.3f ticks %" PRIu64, period(a), fdinfo(a).ticks);

  CHECK(period(b) == 0.05, "B: period %.6f", period(b));
  CHECK(left(b) > 0 && left(b) <= 0.05, "B: %.6f s left in its period", left(b));
  uint64_t v = 0;
  CHECK(read(b2, &v, 8) == 8 && v >= b_ticks, "B: read %" PRIu64 " expirations, %" PRIu64 " were unread at READY",
        v, b_ticks);

  double c_end = now(CLOCK_REALTIME) + left(c);
  CHECK(c_end > c_deadline - 0.05 && c_end < c_deadline + 0.05, "C: ends at %.3f, deadline %.3f", c_end, c_deadline);
  double f_end = now(CLOCK_MONOTONIC) + left(f);
  CHECK(f_end > f_deadline - 0.05 && f_end < f_deadline + 0.05, "F: ends at %.3f, deadline %.3f", f_end, f_deadline);

  CHECK(fdinfo(d).ticks == 1 && left(d) == 0, "D: ticks %" PRIu64 ", %.3f s left", fdinfo(d).ticks, left(d));
  CHECK(read(d, &v, 8) == 8 && v == 1, "D: read %" PRIu64, v);

  CHECK(read(e, &v, 8) < 0 && errno == EAGAIN, "E: not empty");
  CHECK(left(e) == 0 && period(e) == 0, "E: armed");
  return FINISH();
}
