/* signalfd: signalfds with their masks and flags.
 *
 *   A: SIGUSR1 and SIGRTMIN+2, blocking, FD_CLOEXEC off.
 *   B: SIGTERM, SIGCHLD and SIGRTMAX, SFD_NONBLOCK|SFD_CLOEXEC; B2 = dup(B).
 * The signals are blocked; one SIGUSR1 and one SIGRTMIN+2 (with a value)
 * are pending at the dump. After the trigger: same masks (fdinfo), flags,
 * and reading A gives the pending signals; B has none.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-selftest: selftest.signalfd ${PROGRAM}
// stasis-case: program.signalfd ${PROGRAM}
#include "common.h"

#include <inttypes.h>
#include <sys/signalfd.h>

static uint64_t fdinfo_mask(int fd) {
  char path[64], text[1024];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  if (read_text(path, text, sizeof text) < 0)
    return 0;
  const char *v = status_field(text, "sigmask");
  return v ? strtoull(v, NULL, 16) : 0;
}

static uint64_t bit(int sig) { return 1ull << (sig - 1); }

int main(void) {
  install_trigger(SA_RESTART);
  sigset_t a_set, b_set, all;
  sigemptyset(&a_set);
  sigaddset(&a_set, SIGUSR1);
  sigaddset(&a_set, SIGRTMIN + 2);
  sigemptyset(&b_set);
  sigaddset(&b_set, SIGTERM);
  sigaddset(&b_set, SIGCHLD);
  sigaddset(&b_set, SIGRTMAX);
  sigemptyset(&all);
  sigaddset(&all, SIGUSR1);
  sigaddset(&all, SIGRTMIN + 2);
  sigaddset(&all, SIGTERM);
  sigaddset(&all, SIGRTMAX);
  SETUP(sigprocmask(SIG_BLOCK, &all, NULL) == 0, "block");
  int a = signalfd(-1, &a_set, 0);
  int b = signalfd(-1, &b_set, SFD_NONBLOCK | SFD_CLOEXEC);
  int b2 = dup(b);
  SETUP(a >= 0 && b >= 0 && b2 >= 0, "signalfd");
  SETUP(kill(getpid(), SIGUSR1) == 0, "raise SIGUSR1");
  SETUP(sigqueue(getpid(), SIGRTMIN + 2, (union sigval){.sival_int = 4242}) == 0, "queue RT");
  uint64_t want_a = bit(SIGUSR1) | bit(SIGRTMIN + 2);
  uint64_t want_b = bit(SIGTERM) | bit(SIGCHLD) | bit(SIGRTMAX);
  SETUP(fdinfo_mask(a) == want_a && fdinfo_mask(b) == want_b, "fdinfo masks before");
  int fl_a = fcntl(a, F_GETFL), fl_b = fcntl(b, F_GETFL);

  READY();
  wait_for_trigger();

  CHECK(fdinfo_mask(a) == want_a, "A: sigmask %#" PRIx64 ", expected %#" PRIx64, fdinfo_mask(a), want_a);
  CHECK(fdinfo_mask(b) == want_b, "B: sigmask %#" PRIx64 ", expected %#" PRIx64, fdinfo_mask(b), want_b);
  CHECK(fdinfo_mask(b2) == want_b, "B2: sigmask %#" PRIx64, fdinfo_mask(b2));
  CHECK(fcntl(a, F_GETFL) == fl_a && fcntl(b, F_GETFL) == fl_b && fcntl(b2, F_GETFL) == fl_b,
        "F_GETFL %#o %#o %#o, before %#o %#o", fcntl(a, F_GETFL), fcntl(b, F_GETFL), fcntl(b2, F_GETFL), fl_a, fl_b);
  CHECK(fcntl(a, F_GETFD) == 0 && fcntl(b, F_GETFD) == FD_CLOEXEC && fcntl(b2, F_GETFD) == 0, "F_GETFD");
  char link[64] = "", p[64];
  snprintf(p, sizeof p, "/proc/self/fd/%d", a);
  ssize_t n = readlink(p, link, sizeof link - 1);
  link[n > 0 ? n : 0] = '\0';
  CHECK(strcmp(link, "anon_inode:[signalfd]") == 0, "A is '%s'", link);

  struct signalfd_siginfo si;
  CHECK(read(b, &si, sizeof si) < 0 && errno == EAGAIN, "B: a signal to read, or it blocks");
  CHECK(read(a, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1, "A: first read gave signal %u",
        si.ssi_signo);
  CHECK(read(a, &si, sizeof si) == sizeof si && (int)si.ssi_signo == SIGRTMIN + 2 && si.ssi_int == 4242,
        "A: second read gave signal %u value %d", si.ssi_signo, si.ssi_int);
  fcntl(a, F_SETFL, O_NONBLOCK);
  CHECK(read(a, &si, sizeof si) < 0 && errno == EAGAIN, "A: a third signal");
  /* B works: SIGTERM through the dup. */
  CHECK(kill(getpid(), SIGTERM) == 0 && read(b2, &si, sizeof si) == sizeof si && si.ssi_signo == SIGTERM,
        "B2: SIGTERM not read");
  return FINISH();
}
