/* eventfd: eventfds in every state the kind carries.
 *
 *   A: counter 0, blocking, FD_CLOEXEC off.
 *   B: counter 5.
 *   C: counter 0x120000000 (> 2^32, from two writes of 0x90000000).
 *   D: EFD_SEMAPHORE, counter 3, O_NONBLOCK.
 *   E: counter 0, O_NONBLOCK, EFD_CLOEXEC; E2 = dup(E): one description.
 *   F: counter 2^64 - 2, the largest a write can reach, O_NONBLOCK.
 * After the trigger: same fds, flags, counters (in fdinfo and by reading),
 * semaphore mode, and the shared description of E and E2.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-case: program.eventfd ${PROGRAM}
// stasis-selftest: selftest.eventfd ${PROGRAM}
#include "common.h"

#include <inttypes.h>
#include <poll.h>
#include <sys/eventfd.h>

#define C_HALF 0x90000000ull
#define F_MAX 0xfffffffffffffffeull

struct efd {
  const char *name;
  int fd;
  uint64_t count;
  int semaphore;
  int want_fl, want_fdf;
};

static int make(uint64_t count, int flags) {
  int fd = eventfd(0, flags);
  SETUP(fd >= 0, "eventfd");
  if (count)
    SETUP(write(fd, &count, 8) == 8, "write %#" PRIx64, count);
  return fd;
}

/* "eventfd-count" / "eventfd-semaphore" of fd, or (uint64_t)-1. */
static uint64_t fdinfo_value(int fd, const char *key, int base) {
  char path[64], text[1024];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  if (read_text(path, text, sizeof text) < 0)
    return (uint64_t)-1;
  const char *v = status_field(text, key);
  return v ? strtoull(v, NULL, base) : (uint64_t)-1;
}

static int64_t read_count(int fd, uint64_t *out) {
  ssize_t n = read(fd, out, 8);
  return n == 8 ? 0 : -1;
}

static void check_state(const struct efd *e) {
  int fl = fcntl(e->fd, F_GETFL), fdf = fcntl(e->fd, F_GETFD);
  CHECK(fl == e->want_fl, "%s (fd %d): F_GETFL %#o, expected %#o", e->name, e->fd, fl, e->want_fl);
  CHECK(fdf == e->want_fdf, "%s (fd %d): F_GETFD %#x, expected %#x", e->name, e->fd, fdf, e->want_fdf);
  char path[64], link[64] = "";
  snprintf(path, sizeof path, "/proc/self/fd/%d", e->fd);
  ssize_t n = readlink(path, link, sizeof link - 1);
  link[n > 0 ? n : 0] = '\0';
  CHECK(strcmp(link, "anon_inode:[eventfd]") == 0, "%s (fd %d) is '%s'", e->name, e->fd, link);
  uint64_t count = fdinfo_value(e->fd, "eventfd-count", 16);
  uint64_t sem = fdinfo_value(e->fd, "eventfd-semaphore", 10);
  CHECK(count == e->count, "%s: fdinfo count %#" PRIx64 ", expected %#" PRIx64, e->name, count, e->count);
  CHECK(sem == (uint64_t)e->semaphore, "%s: fdinfo semaphore %" PRIu64 ", expected %d", e->name, sem, e->semaphore);
  struct pollfd p = {e->fd, POLLIN | POLLOUT, 0};
  CHECK(poll(&p, 1, 0) >= 0 && (p.revents & POLLIN) == (e->count ? POLLIN : 0), "%s: poll revents %#x", e->name,
        p.revents);
}

int main(void) {
  install_trigger(SA_RESTART);
  int a = make(0, 0);
  int b = make(5, EFD_CLOEXEC);
  int c = make(C_HALF, EFD_CLOEXEC);
  SETUP(write(c, &(uint64_t){C_HALF}, 8) == 8, "second write to C");
  int d = make(3, EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC);
  int e = make(0, EFD_NONBLOCK | EFD_CLOEXEC);
  int e2 = dup(e);
  SETUP(e2 >= 0, "dup");
  int f = make(F_MAX, EFD_NONBLOCK);
  SETUP(fcntl(f, F_SETFD, FD_CLOEXEC) == 0, "FD_CLOEXEC");

  struct efd all[] = {
      {"A", a, 0, 0, O_RDWR, 0},
      {"B", b, 5, 0, O_RDWR, FD_CLOEXEC},
      {"C", c, 2 * C_HALF, 0, O_RDWR, FD_CLOEXEC},
      {"D", d, 3, 1, O_RDWR | O_NONBLOCK, FD_CLOEXEC},
      {"E", e, 0, 0, O_RDWR | O_NONBLOCK, FD_CLOEXEC},
      {"E dup", e2, 0, 0, O_RDWR | O_NONBLOCK, 0},
      {"F", f, F_MAX, 0, O_RDWR | O_NONBLOCK, FD_CLOEXEC},
  };
  const int n = sizeof all / sizeof all[0];

  READY();
  wait_for_trigger();

  for (int i = 0; i < n; i++)
    check_state(&all[i]);

  uint64_t v = 0;
  /* A: empty and blocking; a write makes it readable. */
  CHECK(write(a, &(uint64_t){2}, 8) == 8 && read_count(a, &v) == 0 && v == 2, "A: wrote 2, read %" PRIu64, v);
  /* B, C: a read takes the whole count. */
  CHECK(read_count(b, &v) == 0 && v == 5, "B: read %" PRIu64 ", expected 5", v);
  CHECK(read_count(c, &v) == 0 && v == 2 * C_HALF, "C: read %#" PRIx64 ", expected %#llx", v, 2 * C_HALF);
  /* D: semaphore: 1 three times, then EAGAIN. */
  for (int i = 0; i < 3; i++)
    CHECK(read_count(d, &v) == 0 && v == 1, "D: read %d gave %" PRIu64 " (%s)", i + 1, v, strerror(errno));
  CHECK(read_count(d, &v) < 0 && errno == EAGAIN, "D: fourth read did not give EAGAIN");
  /* E: empty and non-blocking; E2 is the same eventfd. */
  CHECK(read_count(e, &v) < 0 && errno == EAGAIN, "E: read of an empty eventfd did not give EAGAIN");
  CHECK(write(e2, &(uint64_t){7}, 8) == 8 && read_count(e, &v) == 0 && v == 7, "E: 7 written via E2, read %" PRIu64,
        v);
  /* F: full: one more would overflow. */
  CHECK(write(f, &(uint64_t){1}, 8) < 0 && errno == EAGAIN, "F: write past the maximum did not give EAGAIN");
  CHECK(read_count(f, &v) == 0 && v == F_MAX, "F: read %#" PRIx64, v);
  return FINISH();
}
