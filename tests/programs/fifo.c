/* fifo: named pipes opened by path, with unread data.
 *
 * In DIR ($TMPDIR/ff):
 *   f1: r (O_RDONLY|O_NONBLOCK) and w (O_WRONLY); 3000 pattern bytes
 *       written, 1000 read: 2000 unread. r2: a second read description.
 *   f2: rw (O_RDWR), pipe size 128 KiB, 10 unread bytes.
 *   f3: r3 (O_RDONLY|O_NONBLOCK) alone: no writer, reads give EOF.
 * After the trigger: same FIFOs, flags and pipe size; the unread bytes, in
 * order and only once; descriptions of one FIFO share its buffer; f3 still
 * has no writer.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-selftest: selftest.fifo ${PROGRAM}
// stasis-case: program.fifo ${PROGRAM}
// stasis-case: program.fifo.cycles3 ${PROGRAM} --cycles 3
#include "common.h"

#include <limits.h>
#include <sys/stat.h>

#define F1_LEN 3000
#define F1_READ 1000

struct saved {
  const char *name;
  int fd, fl, size;
  struct stat st;
};

static void save(struct saved *s, const char *name, int fd) {
  s->name = name;
  s->fd = fd;
  s->fl = fcntl(fd, F_GETFL);
  s->size = fcntl(fd, F_GETPIPE_SZ);
  SETUP(fstat(fd, &s->st) == 0, "fstat");
}

static void check_same(const struct saved *s) {
  struct stat st;
  CHECK(fcntl(s->fd, F_GETFL) == s->fl, "%s: F_GETFL %#o, before %#o", s->name, fcntl(s->fd, F_GETFL), s->fl);
  CHECK(fcntl(s->fd, F_GETPIPE_SZ) == s->size, "%s: pipe size %d, before %d", s->name,
        fcntl(s->fd, F_GETPIPE_SZ), s->size);
  CHECK(fstat(s->fd, &st) == 0 && S_ISFIFO(st.st_mode) && st.st_ino == s->st.st_ino && st.st_dev == s->st.st_dev,
        "%s: not the same FIFO", s->name);
}

int main(int argc, char **argv) {
  install_trigger(SA_RESTART);
  static char top[PATH_MAX], dir[PATH_MAX + 8], p1[PATH_MAX + 16], p2[PATH_MAX + 16], p3[PATH_MAX + 16];
  SETUP(realpath(work_dir(argc, argv), top), "realpath");
  snprintf(dir, sizeof dir, "%s/ff", top);
  SETUP(mkdir(dir, 0755) == 0, "mkdir %s", dir);
  snprintf(p1, sizeof p1, "%s/f1", dir);
  snprintf(p2, sizeof p2, "%s/f2", dir);
  snprintf(p3, sizeof p3, "%s/f3", dir);
  SETUP(mkfifo(p1, 0600) == 0 && mkfifo(p2, 0600) == 0 && mkfifo(p3, 0600) == 0, "mkfifo");

  static uint8_t buf[F1_LEN];
  int r = open(p1, O_RDONLY | O_NONBLOCK);
  int w = open(p1, O_WRONLY);
  int r2 = open(p1, O_RDONLY | O_NONBLOCK);
  SETUP(r >= 0 && w >= 0 && r2 >= 0, "open f1");
  fill(buf, F1_LEN, 21);
  SETUP(write(w, buf, F1_LEN) == F1_LEN, "write f1");
  SETUP(read(r, buf, F1_READ) == F1_READ, "read f1");
  int rw = open(p2, O_RDWR);
  SETUP(rw >= 0 && fcntl(rw, F_SETPIPE_SZ, 128 * 1024) >= 0 && write(rw, "0123456789", 10) == 10, "f2");
  int r3 = open(p3, O_RDONLY | O_NONBLOCK);
  SETUP(r3 >= 0, "open f3");

  struct saved s[5];
  save(&s[0], "f1 r", r);
  save(&s[1], "f1 w", w);
  save(&s[2], "f1 r2", r2);
  save(&s[3], "f2 rw", rw);
  save(&s[4], "f3 r3", r3);

  READY();
  wait_for_trigger();

  for (int i = 0; i < 5; i++)
    check_same(&s[i]);
  static uint8_t in[F1_LEN];
  ssize_t n = read(r, in, sizeof in);
  CHECK(n == F1_LEN - F1_READ, "f1: read %zd unread bytes, expected %d", n, F1_LEN - F1_READ);
  for (ssize_t i = 0; i < n; i++)
    if (in[i] != pat(21, (uint64_t)(F1_READ + i))) {
      CHECK(0, "f1: byte %zd differs", F1_READ + i);
      break;
    }
  CHECK(read(r2, in, 1) < 0 && errno == EAGAIN, "f1: data left for the second reader (doubled?)");
  CHECK(write(w, "xy", 2) == 2 && read(r2, in, 2) == 2 && memcmp(in, "xy", 2) == 0,
        "f1: bytes written by w not read by r2");
  char ten[16] = "";
  CHECK(read(rw, ten, sizeof ten) == 10 && memcmp(ten, "0123456789", 10) == 0, "f2: unread '%s'", ten);
  CHECK(read(r3, in, 1) == 0, "f3: read gave %s, expected EOF (no writer)", strerror(errno));
  return FINISH();
}
