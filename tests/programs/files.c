/* files: regular files and character devices, plus per-process state that
 * goes with them (cwd, umask, rlimits, comm, personality).
 *
 * In DIR (argv[1], $TMPDIR or "."): data.bin (opened twice read-only at
 * different offsets, once O_CLOEXEC), log.txt (O_WRONLY|O_APPEND), rw.bin
 * (O_RDWR, dup()'d: the two fds share one offset). The runner's
 * --change-file-size test appends to DIR/data.bin while the image waits.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-case: program.file_size_changed ${PROGRAM} --change-file-size data.bin
// stasis-case: program.files ${PROGRAM}
// stasis-selftest: selftest.files ${PROGRAM}
#include "common.h"

#include <dirent.h>
#include <limits.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#define DATA_LEN (5 * 4096 + 123)
#define RW_LEN 8192

struct fdesc {
  const char *name;
  int fd;
  int want_fl;  /* F_GETFL & (O_ACCMODE|O_APPEND|O_NONBLOCK) */
  int want_fdf; /* F_GETFD */
  off_t want_off;
  int fl;       /* full F_GETFL before dump */
  const char *path;
  dev_t dev;
  ino_t ino;
};

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

static off_t fsize(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 ? st.st_size : -1;
}

int main(int argc, char **argv) {
  install_trigger(SA_RESTART);
  char dir[PATH_MAX];
  SETUP(realpath(work_dir(argc, argv), dir), "realpath");

  static char p_data[PATH_MAX + 32], p_log[PATH_MAX + 32], p_rw[PATH_MAX + 32], p_wd[PATH_MAX + 32];
  snprintf(p_data, sizeof p_data, "%s/data.bin", dir);
  snprintf(p_log, sizeof p_log, "%s/log.txt", dir);
  snprintf(p_rw, sizeof p_rw, "%s/rw.bin", dir);
  snprintf(p_wd, sizeof p_wd, "%s/wd", dir);

  static uint8_t buf[DATA_LEN];
  int fd = open(p_data, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  SETUP(fd >= 0, "create %s", p_data);
  fill(buf, DATA_LEN, 1);
  SETUP(write(fd, buf, DATA_LEN) == DATA_LEN, "write");
  close(fd);
  fd = open(p_log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  SETUP(fd >= 0 && write(fd, "first line\n", 11) == 11, "create %s", p_log);
  close(fd);

  int ro = open(p_data, O_RDONLY);
  int ro_cx = open(p_data, O_RDONLY | O_CLOEXEC);
  int app = open(p_log, O_WRONLY | O_APPEND);
  int rw = open(p_rw, O_RDWR | O_CREAT | O_TRUNC, 0600);
  SETUP(ro >= 0 && ro_cx >= 0 && app >= 0 && rw >= 0, "open files");
  SETUP(lseek(ro, 100, SEEK_SET) == 100 && lseek(ro_cx, 4097, SEEK_SET) == 4097, "lseek");
  SETUP(write(app, "second\n", 7) == 7, "append");
  fill(buf, RW_LEN, 2);
  SETUP(write(rw, buf, RW_LEN) == RW_LEN && lseek(rw, 1234, SEEK_SET) == 1234, "rw");
  int rw2 = dup(rw);
  int null = open("/dev/null", O_WRONLY);
  int zero = open("/dev/zero", O_RDONLY | O_CLOEXEC);
  int urnd = open("/dev/urandom", O_RDONLY);
  int rnd = open("/dev/random", O_RDONLY | O_NONBLOCK);
  SETUP(rw2 >= 0 && null >= 0 && zero >= 0 && urnd >= 0 && rnd >= 0, "open devices");

  struct fdesc fds[] = {
      {"data.bin ro", ro, O_RDONLY, 0, 100, 0, p_data, 0, 0},
      {"data.bin ro cloexec", ro_cx, O_RDONLY, FD_CLOEXEC, 4097, 0, p_data, 0, 0},
      {"log.txt append", app, O_WRONLY | O_APPEND, 0, 18, 0, p_log, 0, 0},
      {"rw.bin", rw, O_RDWR, 0, 1234, 0, p_rw, 0, 0},
      {"rw.bin dup", rw2, O_RDWR, 0, 1234, 0, p_rw, 0, 0},
      {"/dev/null", null, O_WRONLY, 0, 0, 0, "/dev/null", 0, 0},
      {"/dev/zero", zero, O_RDONLY, FD_CLOEXEC, 0, 0, "/dev/zero", 0, 0},
      {"/dev/urandom", urnd, O_RDONLY, 0, 0, 0, "/dev/urandom", 0, 0},
      {"/dev/random", rnd, O_RDONLY | O_NONBLOCK, 0, 0, 0, "/dev/random", 0, 0},
  };
  const int nfds = sizeof fds / sizeof fds[0];
  for (int i = 0; i < nfds; i++) {
    struct stat st;
    fds[i].fl = fcntl(fds[i].fd, F_GETFL);
    SETUP(fstat(fds[i].fd, &st) == 0, "fstat");
    fds[i].dev = st.st_dev;
    fds[i].ino = st.st_ino;
  }

  /* Process state. */
  SETUP(mkdir(p_wd, 0755) == 0 || errno == EEXIST, "mkdir wd");
  SETUP(chdir(p_wd) == 0, "chdir");
  umask(027);
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = 512;
  SETUP(setrlimit(RLIMIT_NOFILE, &rl) == 0, "RLIMIT_NOFILE");
  getrlimit(RLIMIT_CORE, &rl);
  rl.rlim_cur = 0;
  SETUP(setrlimit(RLIMIT_CORE, &rl) == 0, "RLIMIT_CORE");
  struct rlimit rl_before[RLIMIT_NLIMITS];
  for (int r = 0; r < RLIMIT_NLIMITS; r++)
    getrlimit(r, &rl_before[r]);
  SETUP(prctl(PR_SET_NAME, "stasis-files") == 0, "PR_SET_NAME");
  int pers0 = personality(0xffffffff);
  SETUP(personality((unsigned long)pers0 | ADDR_COMPAT_LAYOUT) != -1, "personality");
  int pers = personality(0xffffffff);
  SETUP(pers & ADDR_COMPAT_LAYOUT, "ADDR_COMPAT_LAYOUT not set");
  unsigned char fds_before[32], fds_after[32];
  fd_set_now(fds_before);

  READY();
  wait_for_trigger();

  fd_set_now(fds_after);
  for (int f = 0; f < 256; f++) {
    int was = fds_before[f / 8] >> (f % 8) & 1, is = fds_after[f / 8] >> (f % 8) & 1;
    CHECK(was == is, "fd %d %s", f, was ? "is no longer open" : "appeared");
  }

  /* Each fd: same file, offset, flags. */
  for (int i = 0; i < nfds; i++) {
    struct fdesc *d = &fds[i];
    struct stat st, pst;
    int fl = fcntl(d->fd, F_GETFL), fdf = fcntl(d->fd, F_GETFD);
    off_t off = lseek(d->fd, 0, SEEK_CUR);
    CHECK(fstat(d->fd, &st) == 0 && st.st_dev == d->dev && st.st_ino == d->ino,
          "%s (fd %d): not the same file (dev/ino)", d->name, d->fd);
    CHECK(stat(d->path, &pst) == 0 && pst.st_ino == st.st_ino && pst.st_dev == st.st_dev,
          "%s (fd %d): is not %s", d->name, d->fd, d->path);
    CHECK((fl & (O_ACCMODE | O_APPEND | O_NONBLOCK)) == d->want_fl, "%s (fd %d): F_GETFL %#o, expected %#o", d->name,
          d->fd, fl & (O_ACCMODE | O_APPEND | O_NONBLOCK), d->want_fl);
    CHECK(fl == d->fl, "%s (fd %d): F_GETFL %#o, before dump %#o", d->name, d->fd, fl, d->fl);
    CHECK(fdf == d->want_fdf, "%s (fd %d): F_GETFD %#x, expected %#x", d->name, d->fd, fdf, d->want_fdf);
    if (S_ISREG(st.st_mode))
      CHECK(off == d->want_off, "%s (fd %d): offset %lld, expected %lld", d->name, d->fd, (long long)off,
            (long long)d->want_off);
  }

  /* Devices are the right ones. */
  struct {
    int fd;
    unsigned maj, min;
    const char *name;
  } devs[] = {{null, 1, 3, "/dev/null"}, {zero, 1, 5, "/dev/zero"}, {urnd, 1, 9, "/dev/urandom"}, {rnd, 1, 8, "/dev/random"}};
  for (int i = 0; i < 4; i++) {
    struct stat st;
    fstat(devs[i].fd, &st);
    CHECK(S_ISCHR(st.st_mode) && major(st.st_rdev) == devs[i].maj && minor(st.st_rdev) == devs[i].min,
          "fd %d: rdev %u:%u, expected %s %u:%u", devs[i].fd, major(st.st_rdev), minor(st.st_rdev), devs[i].name,
          devs[i].maj, devs[i].min);
  }

  /* Contents at the offsets; the two opens of data.bin are independent, the
   * dup of rw.bin shares the offset. */
  uint8_t in[256];
  ssize_t r = read(ro, in, 64);
  CHECK(r == 64, "read data.bin fd %d: %zd", ro, r);
  for (int i = 0; i < r; i++)
    if (in[i] != pat(1, 100 + (uint64_t)i)) {
      CHECK(0, "data.bin at offset %d: byte %#x, expected %#x", 100 + i, in[i], pat(1, 100 + (uint64_t)i));
      break;
    }
  CHECK(lseek(ro_cx, 0, SEEK_CUR) == 4097, "reading fd %d moved the offset of the other open fd %d", ro, ro_cx);
  r = read(ro_cx, in, 256);
  CHECK(r == 256, "read data.bin fd %d: %zd", ro_cx, r);
  for (int i = 0; i < r; i++)
    if (in[i] != pat(1, 4097 + (uint64_t)i)) {
      CHECK(0, "data.bin at offset %d: byte %#x, expected %#x", 4097 + i, in[i], pat(1, 4097 + (uint64_t)i));
      break;
    }
  r = read(rw, in, 100);
  CHECK(r == 100, "read rw.bin: %zd", r);
  for (int i = 0; i < r; i++)
    if (in[i] != pat(2, 1234 + (uint64_t)i)) {
      CHECK(0, "rw.bin at offset %d: byte %#x, expected %#x", 1234 + i, in[i], pat(2, 1234 + (uint64_t)i));
      break;
    }
  CHECK(lseek(rw2, 0, SEEK_CUR) == 1334, "dup fd %d of rw.bin at offset %lld after reading fd %d, expected 1334 "
        "(shared)", rw2, (long long)lseek(rw2, 0, SEEK_CUR), rw);
  CHECK(write(rw2, "XY", 2) == 2 && pread(rw, in, 2, 1334) == 2 && memcmp(in, "XY", 2) == 0,
        "write through dup fd at shared offset not found at 1334");

  /* O_APPEND: writes go to the end whatever the offset. */
  lseek(app, 0, SEEK_SET);
  off_t sz = fsize(app);
  CHECK(write(app, "third\n", 6) == 6, "write log.txt: %s", strerror(errno));
  CHECK(fsize(app) == sz + 6, "O_APPEND write: size %lld, expected %lld",
        (long long)fsize(app), (long long)sz + 6);
  int lfd = open(p_log, O_RDONLY);
  char text[64] = "";
  if (lfd >= 0) {
    r = read(lfd, text, sizeof text - 1);
    text[r > 0 ? r : 0] = '\0';
    close(lfd);
  }
  CHECK(strcmp(text, "first line\nsecond\nthird\n") == 0, "log.txt is '%s'", text);

  /* Devices work. */
  memset(in, 0xff, sizeof in);
  CHECK(read(zero, in, sizeof in) == (ssize_t)sizeof in && nonzero(in, sizeof in) < 0, "/dev/zero did not read zeros");
  CHECK(read(urnd, in, 32) == 32, "/dev/urandom read: %s", strerror(errno));
  CHECK(read(rnd, in, 16) == 16, "/dev/random read: %s", strerror(errno));
  CHECK(write(null, in, 100) == 100, "/dev/null write: %s", strerror(errno));

  /* Process state. */
  char cwd[PATH_MAX];
  CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, p_wd) == 0, "cwd '%s', expected '%s'", cwd, p_wd);
  mode_t um = umask(022);
  CHECK(um == 027, "umask %03o, expected 027", (unsigned)um);
  for (int i = 0; i < RLIMIT_NLIMITS; i++) {
    getrlimit(i, &rl);
    CHECK(rl.rlim_cur == rl_before[i].rlim_cur && rl.rlim_max == rl_before[i].rlim_max,
          "rlimit %d: %llu/%llu, expected %llu/%llu", i, (unsigned long long)rl.rlim_cur,
          (unsigned long long)rl.rlim_max, (unsigned long long)rl_before[i].rlim_cur,
          (unsigned long long)rl_before[i].rlim_max);
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  CHECK(rl.rlim_cur == 512, "RLIMIT_NOFILE soft %llu", (unsigned long long)rl.rlim_cur);
  getrlimit(RLIMIT_CORE, &rl);
  CHECK(rl.rlim_cur == 0, "RLIMIT_CORE soft %llu", (unsigned long long)rl.rlim_cur);
  char comm[17] = "";
  prctl(PR_GET_NAME, comm);
  CHECK(strcmp(comm, "stasis-files") == 0, "comm '%s', expected 'stasis-files'", comm);
  char pcomm[64] = "";
  read_text("/proc/self/comm", pcomm, sizeof pcomm);
  CHECK(strcmp(pcomm, "stasis-files\n") == 0, "/proc/self/comm '%s'", pcomm);
  int pers_now = personality(0xffffffff);
  CHECK(pers_now == pers, "personality %#x, expected %#x", pers_now, pers);

  return FINISH();
}
