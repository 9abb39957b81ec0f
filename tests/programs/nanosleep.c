/* nanosleep: dumped while sleeping; the sleep must complete after restore.
 *
 *   nanosleep rel   one nanosleep() of 4 s with a rem pointer (glibc issues
 *                   clock_nanosleep, syscall 230): returns 0, and at least
 *                   4 s of CLOCK_MONOTONIC have passed.
 *   nanosleep abs   clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) to now+4 s:
 *                   returns 0 at or after the deadline.
 * An EINTR means the engine did not restart the sleep. No trigger: the
 * program ends by itself.
 */
// Cases (the format is in CMakeLists.txt):
// Blocked in clock_nanosleep (230); the program ends by itself.
// stasis-case: program.nanosleep_rel ${PROGRAM} rel --expect-syscall 230 --trigger none
// stasis-case: program.nanosleep_abs ${PROGRAM} abs --expect-syscall 230 --trigger none
// stasis-selftest: selftest.nanosleep_rel ${PROGRAM} rel --expect-syscall 230 --trigger none
// stasis-selftest: selftest.nanosleep_abs ${PROGRAM} abs --expect-syscall 230 --trigger none
#include "common.h"

int main(int argc, char **argv) {
  int abs_mode = argc > 1 && strcmp(argv[1], "abs") == 0;
  SETUP(argc > 1 && (abs_mode || strcmp(argv[1], "rel") == 0), "usage: nanosleep rel|abs");

  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  READY();
  if (abs_mode) {
    struct timespec deadline = t0;
    deadline.tv_sec += 4;
    int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(rc == 0, "clock_nanosleep(TIMER_ABSTIME) returned %d (%s)", rc, strerror(rc));
    CHECK(t1.tv_sec > deadline.tv_sec || (t1.tv_sec == deadline.tv_sec && t1.tv_nsec >= deadline.tv_nsec),
          "woke at %lld.%09ld, before the deadline %lld.%09ld", (long long)t1.tv_sec, t1.tv_nsec,
          (long long)deadline.tv_sec, deadline.tv_nsec);
  } else {
    struct timespec req = {4, 0}, rem = {-1, -1};
    int rc = nanosleep(&req, &rem);
    int err = errno;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(rc == 0, "nanosleep returned %d (%s), rem %lld.%09ld", rc, strerror(err), (long long)rem.tv_sec,
          rem.tv_nsec);
    double slept = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK(slept >= 4.0, "slept only %.6f s of CLOCK_MONOTONIC, expected >= 4", slept);
  }
  return FINISH();
}
