/* POSIX timers (timer_create): a periodic CLOCK_MONOTONIC timer signalling
 * the process with a sigev_value, a one-shot CLOCK_REALTIME timer far in the
 * future aimed at a thread (SIGEV_THREAD_ID), and a SIGEV_NONE timer; plus a
 * disarmed one. After restore: the same timer IDs, intervals, time left no
 * more than before, and the periodic one keeps firing with its value.
 */
// Cases (the format is in CMakeLists.txt):
// timer_create timers keep their ids, clocks, targets, time left and interval.
// stasis-case: program.posix_timers ${PROGRAM}
// stasis-case: program.posix_timers.cycles3 ${PROGRAM} --cycles 3
#include "common.h"

#include <sys/syscall.h>

static volatile sig_atomic_t fired;
static volatile int last_value;

static void on_tick(int sig, siginfo_t *si, void *ctx) {
  (void)sig;
  (void)ctx;
  fired++;
  last_value = si->si_value.sival_int;
}

static timer_t make(clockid_t clock, int notify, int signo, int value, long first_ms, long every_ms) {
  struct sigevent sev = {0};
  sev.sigev_notify = notify;
  sev.sigev_signo = signo;
  sev.sigev_value.sival_int = value;
  if (notify == SIGEV_THREAD_ID) sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
  timer_t t;
  SETUP(timer_create(clock, &sev, &t) == 0, "timer_create");
  struct itimerspec its = {{every_ms / 1000, (every_ms % 1000) * 1000000}, {first_ms / 1000, (first_ms % 1000) * 1000000}};
  if (first_ms) SETUP(timer_settime(t, 0, &its, NULL) == 0, "timer_settime");
  return t;
}

int main(void) {
  install_trigger(0);
  struct sigaction sa = {0};
  sa.sa_sigaction = on_tick;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  SETUP(sigaction(SIGRTMIN + 1, &sa, NULL) == 0, "sigaction");
  timer_t ids[4];
  ids[0] = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 1, 4242, 250, 250);
  ids[1] = make(CLOCK_REALTIME, SIGEV_THREAD_ID, SIGRTMIN + 2, 7, 3600 * 1000, 0);
  ids[2] = make(CLOCK_BOOTTIME, SIGEV_NONE, 0, 0, 1800 * 1000, 60 * 1000);
  ids[3] = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 3, 0, 0, 0); /* disarmed */
  struct itimerspec before[4];
  for (int i = 0; i < 4; i++) timer_gettime(ids[i], &before[i]);
  READY();
  wait_for_trigger();

  struct itimerspec after[4];
  for (int i = 0; i < 4; i++) {
    CHECK(timer_gettime(ids[i], &after[i]) == 0, "timer %d (id %ld) is gone", i, (long)ids[i]);
    CHECK(after[i].it_interval.tv_sec == before[i].it_interval.tv_sec &&
              after[i].it_interval.tv_nsec == before[i].it_interval.tv_nsec,
          "timer %d interval changed", i);
    long b = before[i].it_value.tv_sec, a = after[i].it_value.tv_sec;
    CHECK(a <= b + 1, "timer %d has more time left (%ld s) than before (%ld s)", i, a, b);
    CHECK((i == 3) == (after[i].it_value.tv_sec == 0 && after[i].it_value.tv_nsec == 0),
          "timer %d armed state changed", i);
  }
  CHECK(after[1].it_value.tv_sec > 3000, "the one-shot timer lost its deadline (%ld s left)", (long)after[1].it_value.tv_sec);
  int start = fired;
  struct timespec half = {0, 600 * 1000000};
  while (nanosleep(&half, &half) < 0 && errno == EINTR) {
  }
  CHECK(fired - start >= 2, "the periodic timer fired %d times in 600 ms", fired - start);
  CHECK(last_value == 4242, "si_value %d, expected 4242", last_value);
  return FINISH();
}
