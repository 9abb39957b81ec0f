/* pty: pseudo-terminals inside the tree, as a terminal server and its shell.
 *
 *   root       holds the master of pty A, and both ends of pty B
 *   └─ c       setsid(); A's slave is its controlling terminal
 *      └─ g    its own process group: A's foreground group
 *
 * A: canonical with echo, VERASE ^H, 9600 baud, 33x101. Before the dump c
 *    writes "from c\n"; then root types "one\n", "two^D" and "parx^H"
 *    through the master. So g has the lines "one\n" and "two" (ended by
 *    VEOF) and the unfinished "par" unread, and the master has c's output
 *    and the echo unread.
 * B: nobody's terminal: raw, VMIN 0 / VTIME 5, packet mode, O_NONBLOCK
 *    master, 10x20, exclusive slave, locked after its slave was opened;
 *    "raw\1in" unread at the slave, "bout" at the master.
 * After the trigger: root checks both pairs from the master side (termios,
 * window size, modes, flags, session and foreground group, the unread
 * output), types "rest\n" into A and reads its echo; c checks its
 * controlling terminal (tcgetsid, tcgetpgrp, ttyname, /proc tty_nr,
 * /dev/tty); g checks its group and reads "one\n", "two", "parrest\n".
 */
// Cases (the format is in CMakeLists.txt):
// stasis-selftest: selftest.pty ${PROGRAM}
// stasis-case: program.pty ${PROGRAM} --inspect
// Dumped again once restored: its ptys are then in a PID namespace of ours.
// stasis-case: program.pty.cycles3 ${PROGRAM} --cycles 3
// The queues are read out of the pairs and must be back in the original.
// stasis-case: program.pty.leave_running ${PROGRAM} --leave-running
// stasis-case: program.pty.nobody ${PROGRAM} --user nobody
#include "common.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>

static const char kEcho[] = "from c\r\none\r\ntwoparx\b \b";

static pid_t root_pid, c_pid, g_pid;
static int ma, sa, mb, sb; /* A's master and slave, B's */
static struct termios term_a, term_b;

static int same_termios(const struct termios *x, const struct termios *y) {
  return x->c_iflag == y->c_iflag && x->c_oflag == y->c_oflag && x->c_cflag == y->c_cflag &&
         x->c_lflag == y->c_lflag && x->c_line == y->c_line && memcmp(x->c_cc, y->c_cc, NCCS) == 0 &&
         cfgetispeed(x) == cfgetispeed(y) && cfgetospeed(x) == cfgetospeed(y);
}

/* Reads what fd has within timeout_ms (until a read would wait), up to cap. */
static ssize_t read_now(int fd, char *buf, size_t cap, int timeout_ms) {
  size_t got = 0;
  while (got < cap) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, got ? 50 : timeout_ms) <= 0 || !(p.revents & POLLIN))
      break;
    ssize_t r = read(fd, buf + got, cap - got);
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  return (ssize_t)got;
}

/* One read() of a canonical tty: one line, within timeout_ms. */
static ssize_t read_line(int fd, char *buf, size_t cap, int timeout_ms) {
  struct pollfd p = {fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0)
    return -2;
  return read(fd, buf, cap);
}

static void expect_bytes(const char *who, const char *buf, ssize_t n, const char *want, size_t wn) {
  CHECK(n == (ssize_t)wn && memcmp(buf, want, wn) == 0, "%s: got %zd bytes '%.*s', expected %zu '%.*s'", who, n,
        n > 0 ? (int)n : 0, buf, wn, (int)wn, want);
}

/* F_GETFL and F_GETFD of an fd, to compare after the restore. */
struct fd_flags {
  int fl, fdf;
};
static struct fd_flags flags_of(int fd) { return (struct fd_flags){fcntl(fd, F_GETFL), fcntl(fd, F_GETFD)}; }
static void check_flags(const char *who, int fd, struct fd_flags was) {
  struct fd_flags now = flags_of(fd);
  CHECK(now.fl == was.fl && now.fdf == was.fdf, "%s (fd %d): F_GETFL %#o F_GETFD %d, were %#o %d", who, fd, now.fl,
        now.fdf, was.fl, was.fdf);
}

static int wait_queue(int fd, int want) {
  for (int i = 0; i < 500; i++) {
    int n = -1;
    ioctl(fd, FIONREAD, &n);
    if (n == want)
      return 1;
    usleep(10000);
  }
  return 0;
}

static int int_ioctl(int fd, unsigned long req) {
  int v = -1;
  return ioctl(fd, req, &v) < 0 ? -1 : v;
}

static void check_winsize(const char *who, int fd, int rows, int cols) {
  struct winsize ws = {0};
  CHECK(ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_row == rows && ws.ws_col == cols, "%s: window %dx%d, expected %dx%d",
        who, ws.ws_row, ws.ws_col, rows, cols);
}

/* A child's verdict: its failures on the log (root only says it failed). */
static void child_exit(const char *who) {
  if (check_count_) {
    printf("%s: ", who);
    exit(finish());
  }
  exit(0);
}

static void g_main(void) {
  struct fd_flags sa_flags = flags_of(sa);
  wait_for_trigger();
  check_flags("g: A's slave", sa, sa_flags);
  CHECK(getpgrp() == getpid() && getsid(0) == c_pid, "g: pgid %d sid %d, expected %d %d", getpgrp(), getsid(0),
        getpid(), c_pid);
  struct termios t;
  CHECK(tcgetattr(sa, &t) == 0 && same_termios(&t, &term_a), "g: termios of A changed");
  char buf[256];
  ssize_t n = read_line(sa, buf, sizeof buf, 2000);
  expect_bytes("g: first line", buf, n, "one\n", 4);
  n = read_line(sa, buf, sizeof buf, 2000);
  expect_bytes("g: line ended by VEOF", buf, n, "two", 3);
  n = read_line(sa, buf, sizeof buf, 5000); /* root types "rest\n" */
  expect_bytes("g: unfinished line, finished", buf, n, "parrest\n", 8);
  child_exit("g");
}

static void c_main(int ready_w) {
  close(ma);
  SETUP(setsid() == getpid(), "setsid");
  SETUP(ioctl(sa, TIOCSCTTY, 0) == 0, "TIOCSCTTY");
  SETUP(write(sa, "from c\n", 7) == 7, "write A");
  pid_t me = c_pid = getpid();
  g_pid = fork();
  SETUP(g_pid >= 0, "fork g");
  if (g_pid == 0) {
    close(ready_w);
    setpgid(0, 0);
    g_main();
  }
  SETUP(setpgid(g_pid, g_pid) == 0 || errno == EACCES, "setpgid g");
  SETUP(tcsetpgrp(sa, g_pid) == 0, "tcsetpgrp");
  SETUP(write(ready_w, &g_pid, sizeof g_pid) == sizeof g_pid, "write ready");
  close(ready_w);
  struct fd_flags sa_flags = flags_of(sa);
  wait_for_trigger();
  check_flags("c: A's slave", sa, sa_flags);

  CHECK(getsid(0) == me && getpgrp() == me, "c: sid %d pgid %d, expected %d", getsid(0), getpgrp(), me);
  CHECK(tcgetsid(sa) == me, "c: tcgetsid %d, expected %d (errno %d)", tcgetsid(sa), me, errno);
  CHECK(tcgetpgrp(sa) == g_pid, "c: tcgetpgrp %d, expected g %d (errno %d)", tcgetpgrp(sa), g_pid, errno);
  struct stat st, named;
  const char *name = ttyname(sa);
  CHECK(fstat(sa, &st) == 0 && name && stat(name, &named) == 0 && named.st_rdev == st.st_rdev,
        "c: ttyname '%s' does not name the slave", name ? name : "(null)");
  char text[1024];
  int tty_nr = -1;
  if (read_text("/proc/self/stat", text, sizeof text) > 0) {
    const char *p = strrchr(text, ')');
    sscanf(p, ") %*c %*d %*d %*d %d", &tty_nr);
  }
  int want_nr = (int)((minor(st.st_rdev) & 0xff) | (major(st.st_rdev) << 8) | ((minor(st.st_rdev) & ~0xffu) << 12));
  CHECK(tty_nr == want_nr, "c: /proc/self/stat tty_nr %#x, expected the slave %#x", tty_nr, want_nr);
  int dev_tty = open("/dev/tty", O_RDWR | O_NOCTTY);
  CHECK(dev_tty >= 0 && tcgetsid(dev_tty) == me, "c: /dev/tty does not reach its terminal (fd %d, errno %d)", dev_tty,
        errno);
  kill(g_pid, SIGUSR2);
  int status;
  CHECK(waitpid(g_pid, &status, 0) == g_pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "c: g failed (status %#x)", status);
  child_exit("c");
}

static void setup_b(void) {
  mb = posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK);
  SETUP(mb >= 0 && unlockpt(mb) == 0, "pty B");
  sb = open(ptsname(mb), O_RDWR | O_NOCTTY);
  SETUP(sb >= 0, "open B slave");
  struct termios t;
  SETUP(tcgetattr(sb, &t) == 0, "tcgetattr B");
  cfmakeraw(&t);
  t.c_cc[VMIN] = 0;
  t.c_cc[VTIME] = 5;
  SETUP(tcsetattr(sb, TCSANOW, &t) == 0 && tcgetattr(sb, &term_b) == 0, "tcsetattr B");
  struct winsize ws = {10, 20, 0, 0};
  SETUP(ioctl(mb, TIOCSWINSZ, &ws) == 0, "TIOCSWINSZ B");
  int one = 1;
  SETUP(ioctl(mb, TIOCPKT, &one) == 0, "TIOCPKT");
  SETUP(write(mb, "raw\1in", 6) == 6 && write(sb, "bout", 4) == 4, "write B");
  SETUP(ioctl(sb, TIOCEXCL) == 0 && ioctl(mb, TIOCSPTLCK, &one) == 0, "exclusive, lock");
  SETUP(wait_queue(sb, 6) && wait_queue(mb, 4), "B queues");
}

static void check_b(void) {
  struct termios t;
  CHECK(tcgetattr(sb, &t) == 0 && same_termios(&t, &term_b), "B: termios changed");
  check_winsize("B", mb, 10, 20);
  CHECK(int_ioctl(mb, TIOCGPKT) == 1, "B: packet mode %d", int_ioctl(mb, TIOCGPKT));
  CHECK(int_ioctl(mb, TIOCGPTLCK) == 1, "B: lock %d", int_ioctl(mb, TIOCGPTLCK));
  CHECK(int_ioctl(sb, TIOCGEXCL) == 1, "B: slave exclusive %d", int_ioctl(sb, TIOCGEXCL));
  CHECK(fcntl(mb, F_GETFL) & O_NONBLOCK, "B: master lost O_NONBLOCK");
  CHECK(!(fcntl(sb, F_GETFL) & O_NONBLOCK), "B: slave got O_NONBLOCK");
  pid_t sid = -1;
  CHECK(ioctl(mb, TIOCGSID, &sid) < 0 && errno == ENOTTY, "B: became the terminal of session %d", sid);
  char buf[64];
  ssize_t n = read_now(mb, buf, sizeof buf, 1000);
  expect_bytes("B: master (packet mode)", buf, n, "\0bout", 5);
  n = read_now(sb, buf, sizeof buf, 1000);
  expect_bytes("B: slave", buf, n, "raw\1in", 6);
  CHECK(write(mb, "x", 1) == 1 && write(sb, "y", 1) == 1, "B: write after restore");
  n = read_now(sb, buf, sizeof buf, 1000);
  expect_bytes("B: slave after restore", buf, n, "x", 1);
  n = read_now(mb, buf, sizeof buf, 1000);
  expect_bytes("B: master after restore", buf, n, "\0y", 2);
}

int main(void) {
  install_trigger(0);
  root_pid = getpid();
  ma = posix_openpt(O_RDWR | O_NOCTTY);
  SETUP(ma >= 0 && grantpt(ma) == 0 && unlockpt(ma) == 0, "pty A");
  sa = open(ptsname(ma), O_RDWR | O_NOCTTY);
  SETUP(sa >= 0, "open A slave");
  struct termios t;
  SETUP(tcgetattr(sa, &t) == 0, "tcgetattr A");
  t.c_lflag |= ICANON | ECHO | ECHOE | ISIG | IEXTEN;
  t.c_cc[VERASE] = 0x08;
  cfsetispeed(&t, B9600);
  cfsetospeed(&t, B9600);
  SETUP(tcsetattr(sa, TCSANOW, &t) == 0 && tcgetattr(sa, &term_a) == 0, "tcsetattr A");
  struct winsize ws = {33, 101, 0, 0};
  SETUP(ioctl(ma, TIOCSWINSZ, &ws) == 0, "TIOCSWINSZ A");
  int ready[2];
  SETUP(pipe(ready) == 0, "pipe");
  c_pid = fork();
  SETUP(c_pid >= 0, "fork c");
  if (c_pid == 0) {
    close(ready[0]);
    c_main(ready[1]);
  }
  close(ready[1]);
  close(sa); /* like forkpty(): the slave lives in the session only */
  SETUP(read(ready[0], &g_pid, sizeof g_pid) == sizeof g_pid, "c ready");
  close(ready[0]);
  SETUP(wait_queue(ma, 8), "c's output");
  SETUP(write(ma, "one\n", 4) == 4 && write(ma, "two\4", 4) == 4 && write(ma, "parx\b", 5) == 5, "type");
  SETUP(wait_queue(ma, (int)strlen(kEcho)), "echo of %zu bytes", strlen(kEcho));
  setup_b();
  struct fd_flags ma_flags = flags_of(ma), mb_flags = flags_of(mb), sb_flags = flags_of(sb);
  struct stat slave_a;
  SETUP(stat(ptsname(ma), &slave_a) == 0, "stat A slave");
  READY();
  wait_for_trigger();

  CHECK(tcgetattr(ma, &t) == 0 && same_termios(&t, &term_a), "A: termios changed (lflag %#x, was %#x)", t.c_lflag,
        term_a.c_lflag);
  check_winsize("A", ma, 33, 101);
  CHECK(int_ioctl(ma, TIOCGPKT) == 0 && int_ioctl(ma, TIOCGPTLCK) == 0, "A: packet mode %d lock %d",
        int_ioctl(ma, TIOCGPKT), int_ioctl(ma, TIOCGPTLCK));
  check_flags("A: master", ma, ma_flags);
  check_flags("B: master", mb, mb_flags);
  check_flags("B: slave", sb, sb_flags);
  pid_t sid = -1, fg = -1;
  CHECK(ioctl(ma, TIOCGSID, &sid) == 0 && sid == c_pid, "A: session %d, expected c %d", sid, c_pid);
  CHECK(ioctl(ma, TIOCGPGRP, &fg) == 0 && fg == g_pid, "A: foreground group %d, expected g %d", fg, g_pid);
  struct stat st;
  CHECK(stat(ptsname(ma), &st) == 0 && st.st_uid == slave_a.st_uid && st.st_gid == slave_a.st_gid &&
            (st.st_mode & 07777) == (slave_a.st_mode & 07777),
        "A: slave node %s owner %d:%d mode %o, was %d:%d %o", ptsname(ma), st.st_uid, st.st_gid, st.st_mode & 07777,
        slave_a.st_uid, slave_a.st_gid, slave_a.st_mode & 07777);
  char buf[256];
  ssize_t n = read_now(ma, buf, sizeof buf, 1000);
  expect_bytes("A: unread output and echo", buf, n, kEcho, strlen(kEcho));
  check_b();
  CHECK(write(ma, "rest\n", 5) == 5, "A: type after restore");
  n = read_now(ma, buf, sizeof buf, 2000);
  expect_bytes("A: echo after restore", buf, n, "rest\r\n", 6);

  kill(c_pid, SIGUSR2);
  int status;
  CHECK(waitpid(c_pid, &status, 0) == c_pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "c failed (status %#x)", status);
  return FINISH();
}
