/* locks: POSIX record locks, OFD locks and flock() locks come back, and
 * processes that did not hold them are still locked out.
 *
 * In DIR ($TMPDIR): posix.bin, ofd.bin, flock.bin.
 *   Parent P: posix.bin through three fds with gaps below them (so the
 *   restore installs them through temporary fds, whose close drops POSIX
 *   locks): fd 7 O_RDWR, fd 12 O_RDWR (another description), fd 15
 *   O_RDONLY. POSIX WRITE lock on bytes 0-99 and READ lock on 200-EOF
 *   (owner P). ofd.bin fd 9: OFD WRITE 10-19 and OFD READ 50-59. flock.bin
 *   fd 10 with LOCK_EX, and fd 11 its dup (one description).
 *   Checker C (child): after the restore, on P's command, checks with
 *   F_GETLK / F_SETLK / F_OFD_GETLK / flock(LOCK_NB) that it is locked out
 *   of each (and sees P as the POSIX owner); later that the locks P let go
 *   of are free, and that P closing fd 15 dropped P's POSIX READ lock
 *   (per-process semantics survive).
 *   Waiter W (child): blocked in fcntl(F_SETLKW) for bytes 0-9 of posix.bin
 *   when dumped. After the restore it must be waiting again, and get the
 *   lock once P unlocks.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-selftest: selftest.locks ${PROGRAM}
// POSIX, OFD and flock locks; a checker child stays locked out, a child
// blocked in F_SETLKW waits again and gets the lock once it is released.
// stasis-case: program.locks ${PROGRAM} --inspect
// stasis-case: program.locks.cycles3 ${PROGRAM} --cycles 3
// stasis-case: program.locks.nobody ${PROGRAM} --user nobody
#include "common.h"

#include <poll.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define SIZE 4096

static char p_posix[4200], p_ofd[4200], p_flock[4200];

static int lock_at(int fd, int cmd, short type, off_t start, off_t len) {
  struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
  return fcntl(fd, cmd, &fl);
}

/* F_GETLK/F_OFD_GETLK for a write lock on the range: the conflicting type
 * (F_UNLCK when free) and its pid. */
static short get_lock(int fd, int cmd, off_t start, off_t len, pid_t *pid) {
  struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
  if (fcntl(fd, cmd, &fl) < 0)
    return -1;
  *pid = fl.l_pid;
  return fl.l_type;
}

static void make_file(const char *path) {
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  static char buf[SIZE];
  SETUP(fd >= 0 && write(fd, buf, SIZE) == SIZE, "create %s", path);
  close(fd);
}

static int open_at(const char *path, int flags, int want) {
  int fd = open(path, flags);
  SETUP(fd >= 0 && dup2(fd, want) == want, "open %s at %d", path, want);
  close(fd);
  return want;
}

/* The report of one check, as a line on the result pipe. */
static char report[2048];
static size_t report_len;
__attribute__((format(printf, 2, 3))) static void c_failed(int line, const char *fmt, ...) {
  if (report_len + 16 >= sizeof report)
    return;
  report_len += (size_t)snprintf(report + report_len, sizeof report - report_len, "line %d: ", line);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(report + report_len, sizeof report - report_len, fmt, ap);
  va_end(ap);
  report_len = n > 0 && report_len + (size_t)n + 3 < sizeof report ? report_len + (size_t)n : sizeof report - 3;
  report[report_len++] = ';';
  report[report_len++] = ' ';
}
#define C_CHECK(cond, ...)               \
  do {                                   \
    if (!(cond))                         \
      c_failed(__LINE__, __VA_ARGS__);   \
  } while (0)

static void send_report(int fd) {
  if (report_len == 0)
    report_len = (size_t)snprintf(report, sizeof report, "ok");
  report[report_len++] = '\n';
  if (write(fd, report, report_len) < 0)
    _exit(3);
  report_len = 0;
}

static void checker(int cmd_fd, int res_fd, pid_t parent) {
  char c;
  if (read(cmd_fd, &c, 1) != 1)
    _exit(2);
  int pf = open(p_posix, O_RDWR);
  pid_t pid = 0;
  short t = get_lock(pf, F_GETLK, 0, 10, &pid);
  C_CHECK(t == F_WRLCK && pid == parent, "posix 0-9: F_GETLK type %d pid %d, expected WRLCK of %d", t, pid, parent);
  t = get_lock(pf, F_GETLK, 99, 1, &pid);
  C_CHECK(t == F_WRLCK && pid == parent, "posix 99: F_GETLK type %d pid %d", t, pid);
  t = get_lock(pf, F_GETLK, 100, 100, &pid);
  C_CHECK(t == F_UNLCK, "posix 100-199: F_GETLK type %d pid %d, expected unlocked", t, pid);
  t = get_lock(pf, F_GETLK, 300, 1, &pid);
  C_CHECK(t == F_RDLCK && pid == parent, "posix 300: F_GETLK type %d pid %d, expected RDLCK of %d", t, pid, parent);
  C_CHECK(lock_at(pf, F_SETLK, F_RDLCK, 250, 10) == 0, "posix 250: read lock beside P's read lock: %s",
          strerror(errno));
  lock_at(pf, F_SETLK, F_UNLCK, 250, 10);
  C_CHECK(lock_at(pf, F_SETLK, F_WRLCK, 5000, 1) < 0 && (errno == EAGAIN || errno == EACCES),
          "posix 5000 (under P's READ lock to EOF): write lock was granted");
  C_CHECK(lock_at(pf, F_SETLK, F_WRLCK, 50, 1) < 0 && (errno == EAGAIN || errno == EACCES),
          "posix 50: write lock was granted");

  int of = open(p_ofd, O_RDWR);
  t = get_lock(of, F_OFD_GETLK, 10, 10, &pid);
  C_CHECK(t == F_WRLCK && pid == -1, "ofd 10-19: F_OFD_GETLK type %d pid %d, expected WRLCK of -1", t, pid);
  t = get_lock(of, F_OFD_GETLK, 55, 1, &pid);
  C_CHECK(t == F_RDLCK, "ofd 55: F_OFD_GETLK type %d, expected RDLCK", t);
  t = get_lock(of, F_OFD_GETLK, 20, 30, &pid);
  C_CHECK(t == F_UNLCK, "ofd 20-49: F_OFD_GETLK type %d, expected unlocked", t);
  t = get_lock(of, F_GETLK, 15, 1, &pid);
  C_CHECK(t == F_WRLCK, "ofd 15: POSIX F_GETLK type %d, expected the OFD WRLCK to conflict", t);

  int ff = open(p_flock, O_RDONLY);
  C_CHECK(flock(ff, LOCK_SH | LOCK_NB) < 0 && errno == EWOULDBLOCK, "flock.bin: LOCK_SH granted under P's LOCK_EX");
  send_report(res_fd);

  /* P let go of its flock and OFD locks and closed fd 15. */
  if (read(cmd_fd, &c, 1) != 1)
    _exit(2);
  C_CHECK(flock(ff, LOCK_SH | LOCK_NB) == 0, "flock.bin: LOCK_SH refused after P unlocked: %s", strerror(errno));
  C_CHECK(lock_at(of, F_OFD_SETLK, F_WRLCK, 0, 0) == 0, "ofd.bin: OFD lock refused after P closed: %s",
          strerror(errno));
  t = get_lock(pf, F_GETLK, 300, 1, &pid);
  C_CHECK(t == F_UNLCK, "posix 300: type %d pid %d after P closed fd 15, expected unlocked", t, pid);
  send_report(res_fd);
  _exit(0);
}

static void waiter(int res_fd, int hold_fd) {
  int pf = open(p_posix, O_RDWR);
  if (pf < 0)
    _exit(2);
  int r = lock_at(pf, F_SETLKW, F_WRLCK, 0, 10);
  report_len = (size_t)snprintf(report, sizeof report, r == 0 ? "got" : "F_SETLKW: %s", strerror(errno));
  send_report(res_fd);
  /* Holds the lock until P tells it to end (P checks it owns it). */
  char c;
  while (read(hold_fd, &c, 1) < 0 && errno == EINTR) {
  }
  _exit(0);
}

/* Is pid blocked waiting for a lock ("->" line in /proc/locks)? */
static int waiting(pid_t pid) {
  static char text[65536];
  if (read_text("/proc/locks", text, sizeof text) < 0)
    return -1;
  char needle[64];
  snprintf(needle, sizeof needle, " %d ", pid);
  for (char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
    char *eol = strchr(l, '\n');
    size_t n = eol ? (size_t)(eol - l) : strlen(l);
    char line[256];
    snprintf(line, sizeof line, "%.*s", (int)n, l);
    if (strstr(line, "->") && strstr(line, needle))
      return 1;
  }
  return 0;
}

/* Number of /proc/locks lines for this inode of class cls, type, pid and range text. */
/* /proc/locks is a seq_file over one global list, handed out about a page
 * per read(): when other processes (other tests) take and drop locks
 * between two reads, an entry can be skipped or repeated. Count in a
 * reading that agrees with the one before it. */
static int count_locks(const char *text, ino_t ino, const char *cls, const char *type, const char *pid,
                       const char *range) {
  char ino_s[64];
  snprintf(ino_s, sizeof ino_s, ":%lu ", (unsigned long)ino);
  int n = 0;
  for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
    const char *eol = strchr(l, '\n');
    size_t len = eol ? (size_t)(eol - l) : strlen(l);
    char line[256];
    snprintf(line, sizeof line, "%.*s", (int)len, l);
    if (!strstr(line, "->") && strstr(line, cls) && strstr(line, type) && strstr(line, pid) &&
        strstr(line, ino_s) && strstr(line, range))
      n++;
  }
  return n;
}

static int has_lock(ino_t ino, const char *cls, const char *type, const char *pid, const char *range) {
  static char text[2][65536];
  int last = -1;
  for (int attempt = 0; attempt < 50; attempt++) {
    char *t = text[attempt % 2];
    if (read_text("/proc/locks", t, sizeof text[0]) < 0)
      return -1;
    int n = count_locks(t, ino, cls, type, pid, range);
    if (attempt > 0 && n == last && strcmp(t, text[(attempt + 1) % 2]) == 0)
      return n;
    last = n;
    usleep(2000);
  }
  return last;
}

static int read_line(int fd, char *buf, size_t cap, int timeout_ms) {
  size_t len = 0;
  while (len + 1 < cap) {
    struct pollfd p = {fd, POLLIN, 0};
    int r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    if (read(fd, buf + len, 1) != 1)
      break;
    if (buf[len] == '\n')
      break;
    len++;
  }
  buf[len] = '\0';
  return (int)len;
}

int main(int argc, char **argv) {
  install_trigger(SA_RESTART);
  const char *dir = work_dir(argc, argv);
  snprintf(p_posix, sizeof p_posix, "%s/posix.bin", dir);
  snprintf(p_ofd, sizeof p_ofd, "%s/ofd.bin", dir);
  snprintf(p_flock, sizeof p_flock, "%s/flock.bin", dir);
  make_file(p_posix);
  make_file(p_ofd);
  make_file(p_flock);
  pid_t me = getpid();

  int cmd[2], res[2], wres[2], whold[2];
  SETUP(pipe(cmd) == 0 && pipe(res) == 0 && pipe(wres) == 0 && pipe(whold) == 0, "pipes");
  /* Out of the way of the file fds below. */
  int *ends[] = {&cmd[0], &cmd[1], &res[0], &res[1], &wres[0], &wres[1], &whold[0], &whold[1]};
  for (int i = 0; i < 8; i++) {
    int moved = fcntl(*ends[i], F_DUPFD, 40);
    SETUP(moved >= 40 && close(*ends[i]) == 0, "move pipe fd");
    *ends[i] = moved;
  }
  pid_t c = fork();
  SETUP(c >= 0, "fork checker");
  if (c == 0) {
    close(cmd[1]);
    close(res[0]);
    checker(cmd[0], res[1], me);
  }
  close(cmd[0]);
  close(res[1]);

  /* The fds at their numbers, with free numbers below them; the locks
   * after the last close of a posix.bin fd (which would drop them). */
  int a = open_at(p_posix, O_RDWR, 7);
  int b = open_at(p_posix, O_RDWR, 12);
  int ro = open_at(p_posix, O_RDONLY, 15);
  SETUP(lock_at(a, F_SETLK, F_WRLCK, 0, 100) == 0, "POSIX write lock");
  SETUP(lock_at(a, F_SETLK, F_RDLCK, 200, 0) == 0, "POSIX read lock");
  pid_t w = fork();
  SETUP(w >= 0, "fork waiter");
  if (w == 0) {
    close(wres[0]);
    close(whold[1]);
    waiter(wres[1], whold[0]);
  }
  close(wres[1]);
  close(whold[0]);
  /* Wait until W is queued behind P's lock. */
  for (int i = 0; i < 500 && waiting(w) != 1; i++)
    usleep(10000);
  SETUP(waiting(w) == 1, "waiter %d is not blocked in F_SETLKW", w);

  int of = open_at(p_ofd, O_RDWR, 9);
  SETUP(lock_at(of, F_OFD_SETLK, F_WRLCK, 10, 10) == 0, "OFD write lock");
  SETUP(lock_at(of, F_OFD_SETLK, F_RDLCK, 50, 10) == 0, "OFD read lock");
  int fl = open_at(p_flock, O_RDWR, 10);
  SETUP(flock(fl, LOCK_EX | LOCK_NB) == 0, "flock");
  SETUP(dup2(fl, 11) == 11, "dup flock fd");
  struct stat st_posix, st_ofd, st_flock;
  SETUP(fstat(a, &st_posix) == 0 && fstat(of, &st_ofd) == 0 && fstat(fl, &st_flock) == 0, "fstat");
  char mypid[32];
  snprintf(mypid, sizeof mypid, " %d ", me);

  READY();
  wait_for_trigger();

  /* P's own locks, as the kernel lists them. */
  CHECK(has_lock(st_posix.st_ino, "POSIX", "WRITE", mypid, " 0 99") == 1, "no POSIX WRITE 0-99 of pid %d", me);
  CHECK(has_lock(st_posix.st_ino, "POSIX", "READ", mypid, " 200 EOF") == 1, "no POSIX READ 200-EOF of pid %d", me);
  CHECK(has_lock(st_ofd.st_ino, "OFDLCK", "WRITE", " -1 ", " 10 19") == 1, "no OFD WRITE 10-19");
  CHECK(has_lock(st_ofd.st_ino, "OFDLCK", "READ", " -1 ", " 50 59") == 1, "no OFD READ 50-59");
  CHECK(has_lock(st_flock.st_ino, "FLOCK", "WRITE", "", " 0 EOF") == 1, "no FLOCK WRITE on flock.bin");
  char info[1024], path[64];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", 11);
  CHECK(read_text(path, info, sizeof info) > 0 && strstr(info, "FLOCK"), "fd 11 (the dup) does not show the flock");

  /* C is locked out. */
  char line[2048];
  CHECK(write(cmd[1], "c", 1) == 1, "command checker");
  read_line(res[0], line, sizeof line, 10000);
  CHECK(strcmp(line, "ok") == 0, "checker: %s", line[0] ? line : "(no answer)");

  /* W waits again, and gets the lock once P lets go of 0-99. */
  int again = 0;
  for (int i = 0; i < 200 && !(again = waiting(w) == 1); i++)
    usleep(10000);
  CHECK(again, "waiter %d is not waiting for the lock after the restore", w);
  int early = read_line(wres[0], line, sizeof line, 0);
  CHECK(early == 0, "waiter answered before the unlock (%d bytes): %s", early, line);
  CHECK(lock_at(b, F_SETLK, F_UNLCK, 0, 100) == 0, "unlock 0-99: %s", strerror(errno));
  read_line(wres[0], line, sizeof line, 10000);
  CHECK(strcmp(line, "got") == 0, "waiter after the unlock: %s", line[0] ? line : "(no answer)");
  pid_t holder = 0;
  short t = get_lock(ro, F_GETLK, 0, 10, &holder);
  CHECK(t == F_WRLCK && holder == w, "posix 0-9: type %d pid %d, expected WRLCK of the waiter %d", t, holder, w);

  /* Let go of the rest; closing any fd of posix.bin drops P's POSIX locks. */
  CHECK(flock(11, LOCK_UN) == 0, "LOCK_UN");
  close(of);
  close(ro);
  CHECK(write(cmd[1], "u", 1) == 1, "command checker");
  read_line(res[0], line, sizeof line, 10000);
  /* An OFD lock lives as long as its description: a process outside the
   * tree holding it (the restorer, or a helper that inherited the
   * restorer's fds) would keep ofd.bin locked here. */
  CHECK(strcmp(line, "ok") == 0, "checker after unlock: %s", line[0] ? line : "(no answer)");

  CHECK(write(whold[1], "x", 1) == 1, "release waiter"); /* W lets go and ends */
  close(wres[0]);
  int status;
  CHECK(waitpid(c, &status, 0) == c && WIFEXITED(status) && WEXITSTATUS(status) == 0, "checker ended with %#x",
        status);
  CHECK(waitpid(w, &status, 0) == w && WIFEXITED(status) && WEXITSTATUS(status) == 0, "waiter ended with %#x",
        status);
  (void)b;
  return FINISH();
}
