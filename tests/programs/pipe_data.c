/* pipe_data: pipes whose both ends the process holds, with data in flight.
 *
 *   A: default size, 10,000 bytes queued; its write end dup()'d (one open
 *      file description shared by two fds); read end FD_CLOEXEC.
 *   B: F_SETPIPE_SZ 131072, 100,000 bytes queued, O_NONBLOCK on both ends.
 *   C: empty, both ends O_CLOEXEC.
 * After the trigger: same fds, same pipes (by inode), exact data, sizes,
 * status and fd flags; shared description; then the pipes still work.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-case: program.pipe_data ${PROGRAM}
// stasis-selftest: selftest.pipe_data ${PROGRAM}
#include "common.h"

#include <dirent.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#define A_LEN 10000
#define B_LEN 100000
#define B_SIZE 131072

struct end {
  const char *name;
  int fd;
  int fl;  /* F_GETFL before dump */
  int fdf; /* F_GETFD before dump */
  int want_fl, want_fdf;
};

/* The set of open fds, as a bitmap of the first 256. */
static void fd_set_now(unsigned char set[32]) {
  memset(set, 0, 32);
  DIR *d = opendir("/proc/self/fd");
  if (!d)
    return;
  struct dirent *e;
  while ((e = readdir(d))) {
    int fd = atoi(e->d_name);
    if (e->d_name[0] != '.' && fd != dirfd(d) && fd < 256)
      set[fd / 8] |= (unsigned char)(1 << (fd % 8));
  }
  closedir(d);
}

/* Reads up to n bytes, stopping early at EOF or EAGAIN (errno tells). */
static ssize_t read_all(int fd, uint8_t *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r < 0)
      return got ? (ssize_t)got : -1;
    if (r == 0)
      break;
    got += (size_t)r;
  }
  return (ssize_t)got;
}

static ino_t ino(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

int main(void) {
  static uint8_t buf[B_LEN + 1];
  install_trigger(SA_RESTART);

  int a[2], b[2], c[2];
  SETUP(pipe(a) == 0, "pipe A");
  SETUP(pipe(b) == 0, "pipe B");
  SETUP(pipe2(c, O_CLOEXEC) == 0, "pipe C");
  int a_w2 = dup(a[1]);
  SETUP(a_w2 >= 0, "dup");
  SETUP(fcntl(a[0], F_SETFD, FD_CLOEXEC) == 0, "FD_CLOEXEC");
  SETUP(fcntl(b[1], F_SETFD, FD_CLOEXEC) == 0, "FD_CLOEXEC");
  SETUP(fcntl(b[0], F_SETPIPE_SZ, B_SIZE) == B_SIZE, "F_SETPIPE_SZ");
  SETUP(fcntl(b[0], F_SETFL, O_NONBLOCK) == 0 && fcntl(b[1], F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");

  fill(buf, A_LEN, 1);
  SETUP(write(a[1], buf, A_LEN) == A_LEN, "write A");
  fill(buf, B_LEN, 2);
  SETUP(write(b[1], buf, B_LEN) == B_LEN, "write B");

  struct end ends[] = {
      {"A read", a[0], 0, 0, O_RDONLY, FD_CLOEXEC},
      {"A write", a[1], 0, 0, O_WRONLY, 0},
      {"A write dup", a_w2, 0, 0, O_WRONLY, 0},
      {"B read", b[0], 0, 0, O_RDONLY | O_NONBLOCK, 0},
      {"B write", b[1], 0, 0, O_WRONLY | O_NONBLOCK, FD_CLOEXEC},
      {"C read", c[0], 0, 0, O_RDONLY, FD_CLOEXEC},
      {"C write", c[1], 0, 0, O_WRONLY, FD_CLOEXEC},
  };
  const int nends = sizeof ends / sizeof ends[0];
  for (int i = 0; i < nends; i++) {
    ends[i].fl = fcntl(ends[i].fd, F_GETFL);
    ends[i].fdf = fcntl(ends[i].fd, F_GETFD);
  }
  SETUP(ino(a[0]) != ino(b[0]) && ino(a[0]) == ino(a_w2), "pipe inodes");
  unsigned char fds_before[32], fds_after[32];
  fd_set_now(fds_before);

  READY();
  wait_for_trigger();

  fd_set_now(fds_after);
  for (int fd = 0; fd < 256; fd++) {
    int was = fds_before[fd / 8] >> (fd % 8) & 1, is = fds_after[fd / 8] >> (fd % 8) & 1;
    CHECK(was == is, "fd %d %s", fd, was ? "is no longer open" : "appeared");
  }

  /* Same pipes, and each fd is the right end of the right pipe. */
  /* (The inode numbers may change; ends of one pipe must share one.) */
  CHECK(ino(a[0]) == ino(a[1]) && ino(a[1]) == ino(a_w2), "pipe A: fds %d %d %d are not one pipe (inodes %lu %lu %lu)",
        a[0], a[1], a_w2, (unsigned long)ino(a[0]), (unsigned long)ino(a[1]), (unsigned long)ino(a_w2));
  CHECK(ino(b[0]) == ino(b[1]), "pipe B: fds %d %d are not one pipe (inodes %lu %lu)", b[0], b[1],
        (unsigned long)ino(b[0]), (unsigned long)ino(b[1]));
  CHECK(ino(c[0]) == ino(c[1]), "pipe C: fds %d %d are not one pipe (inodes %lu %lu)", c[0], c[1],
        (unsigned long)ino(c[0]), (unsigned long)ino(c[1]));
  CHECK(ino(a[0]) != ino(b[0]) && ino(b[0]) != ino(c[0]) && ino(a[0]) != ino(c[0]),
        "pipes A, B, C are not distinct (inodes %lu %lu %lu)", (unsigned long)ino(a[0]), (unsigned long)ino(b[0]),
        (unsigned long)ino(c[0]));

  for (int i = 0; i < nends; i++) {
    struct end *e = &ends[i];
    int fl = fcntl(e->fd, F_GETFL), fdf = fcntl(e->fd, F_GETFD);
    CHECK(fl == e->fl, "%s (fd %d): F_GETFL %#o, expected %#o", e->name, e->fd, fl, e->fl);
    CHECK((fl & (O_ACCMODE | O_NONBLOCK)) == e->want_fl, "%s (fd %d): F_GETFL %#o, set up %#o", e->name, e->fd, fl,
          e->want_fl);
    CHECK(fdf == e->fdf && fdf == e->want_fdf, "%s (fd %d): F_GETFD %#x, expected %#x", e->name, e->fd, fdf,
          e->want_fdf);
  }

  int sa = fcntl(a[0], F_GETPIPE_SZ), sb = fcntl(b[0], F_GETPIPE_SZ), sc = fcntl(c[0], F_GETPIPE_SZ);
  CHECK(sa == 65536, "pipe A F_GETPIPE_SZ %d, expected 65536", sa);
  CHECK(sb == B_SIZE, "pipe B F_GETPIPE_SZ %d, expected %d", sb, B_SIZE);
  CHECK(sc == 65536, "pipe C F_GETPIPE_SZ %d, expected 65536", sc);

  int qa = -1, qb = -1, qc = -1;
  ioctl(a[0], FIONREAD, &qa);
  ioctl(b[0], FIONREAD, &qb);
  ioctl(c[0], FIONREAD, &qc);
  CHECK(qa == A_LEN, "pipe A holds %d bytes, expected %d", qa, A_LEN);
  CHECK(qb == B_LEN, "pipe B holds %d bytes, expected %d", qb, B_LEN);
  CHECK(qc == 0, "pipe C holds %d bytes, expected 0", qc);

  /* The dup shares its open file description: flags set on one show on the
   * other (two separate opens would not). */
  fcntl(a[1], F_SETFL, O_NONBLOCK);
  CHECK(fcntl(a_w2, F_GETFL) & O_NONBLOCK, "O_NONBLOCK set on fd %d does not show on its dup fd %d", a[1], a_w2);
  fcntl(a_w2, F_SETFL, 0);
  CHECK(!(fcntl(a[1], F_GETFL) & O_NONBLOCK), "O_NONBLOCK cleared on dup fd %d still set on fd %d", a_w2, a[1]);

  /* Data, then more data through each pipe (A is blocking: it holds A_LEN). */
  if (qa == A_LEN) {
    ssize_t r = read_all(a[0], buf, A_LEN);
    long off = mismatch(buf, A_LEN, 1);
    CHECK(r == A_LEN && off < 0, "pipe A data: read %zd, first difference at %ld", r, off);
  }
  ssize_t r = read_all(b[0], buf, B_LEN + 1);
  long off = mismatch(buf, B_LEN, 2);
  CHECK(r == B_LEN && off < 0, "pipe B data: read %zd bytes (expected %d then EAGAIN), first difference at %ld", r,
        B_LEN, off);
  CHECK(errno == EAGAIN, "pipe B read after the data: errno %d, expected EAGAIN", errno);

  int wends[] = {a[1], a_w2, b[1], c[1]}, rends[] = {a[0], a[0], b[0], c[0]};
  for (int i = 0; i < 4; i++) {
    uint8_t out[3000], in[3000];
    fill(out, sizeof out, 10 + (uint64_t)i);
    ssize_t w = write(wends[i], out, sizeof out);
    ssize_t rr = read_all(rends[i], in, sizeof in);
    CHECK(w == (ssize_t)sizeof out && rr == (ssize_t)sizeof in && memcmp(in, out, sizeof in) == 0,
          "write fd %d / read fd %d after restore: wrote %zd, read %zd, data %s", wends[i], rends[i], w, rr,
          rr == (ssize_t)sizeof in && memcmp(in, out, sizeof in) == 0 ? "same" : "differs");
  }
  /* B really holds 128 KiB now. */
  fill(buf, B_LEN, 3);
  ssize_t w1 = write(b[1], buf, B_LEN), w2 = write(b[1], buf, B_SIZE - B_LEN);
  ssize_t w3 = write(b[1], buf, 1);
  CHECK(w1 == B_LEN && w2 == B_SIZE - B_LEN && w3 == -1 && errno == EAGAIN,
        "pipe B capacity: writes of %d+%d+1 gave %zd, %zd, %zd", B_LEN, B_SIZE - B_LEN, w1, w2, w3);

  return FINISH();
}
