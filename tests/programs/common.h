/* Helpers shared by the end-to-end test programs (see run_case.py).
 *
 * Shape of every program: set up state, READY(), wait for the trigger
 * (SIGUSR2) while the runner dumps and restores it, check every property with
 * CHECK(), then return FINISH() which prints PASS or "FAIL: ..." and gives the
 * exit status.
 *
 * Nothing may be written to stdout/stderr between READY and the trigger: the
 * log is a regular file and the restore refuses files whose size changed.
 * The helpers below avoid malloc() after setup so that checks that compare
 * /proc/self/maps are not disturbed by the checking code itself.
 */
#ifndef STASIS_TEST_COMMON_H
#define STASIS_TEST_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* --- result reporting ---------------------------------------------------- */

#define CHECK_KEEP 6 /* failures kept for the report; the first one decides */
static char check_msg_[CHECK_KEEP][400] __attribute__((unused));
static int check_lines_[CHECK_KEEP] __attribute__((unused));
static int check_count_ __attribute__((unused));
#define check_line_ check_lines_[0] /* non-zero once something failed */

__attribute__((format(printf, 2, 3))) static inline void check_failed_(int line, const char *fmt, ...) {
  if (check_count_ < CHECK_KEEP) {
    check_lines_[check_count_] = line;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(check_msg_[check_count_], sizeof check_msg_[0], fmt, ap);
    va_end(ap);
  }
  check_count_++;
}

#define CHECK(cond, ...)                    \
  do {                                      \
    if (!(cond))                            \
      check_failed_(__LINE__, __VA_ARGS__); \
  } while (0)

#define READY()          \
  do {                   \
    printf("READY\n");   \
    fflush(stdout);      \
  } while (0)

#define PASS()          \
  do {                  \
    printf("PASS\n");   \
    fflush(stdout);     \
    exit(0);            \
  } while (0)

/* Immediate failure, for setup errors (before READY) and hopeless states. */
#define FAIL(...)                                   \
  do {                                              \
    printf("FAIL: line %d: ", __LINE__);            \
    printf(__VA_ARGS__);                            \
    printf(" (errno %d %s)\n", errno, strerror(errno)); \
    fflush(stdout);                                 \
    exit(1);                                        \
  } while (0)

/* Setup step that must succeed, e.g. SETUP(fd >= 0, "open %s", path). */
#define SETUP(cond, ...)   \
  do {                     \
    if (!(cond))           \
      FAIL(__VA_ARGS__);   \
  } while (0)

/* Prints the verdict (the first failure on the FAIL line, a few more after
 * it, for whoever debugs the engine); returns the exit status for main(). */
static inline int finish(void) {
  if (check_count_) {
    printf("FAIL: line %d: %s", check_lines_[0], check_msg_[0]);
    if (check_count_ > 1)
      printf(" (and %d more failed checks)", check_count_ - 1);
    printf("\n");
    for (int i = 1; i < check_count_ && i < CHECK_KEEP; i++)
      printf("  also line %d: %s\n", check_lines_[i], check_msg_[i]);
    fflush(stdout);
    return 1;
  }
  PASS();
}
#define FINISH() finish()

/* --- trigger -------------------------------------------------------------- */

static volatile sig_atomic_t triggered __attribute__((unused));

static inline void on_trigger_(int sig) {
  (void)sig;
  triggered = 1;
}

static inline void install_trigger(int sa_flags) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_trigger_;
  sa.sa_flags = sa_flags;
  sigemptyset(&sa.sa_mask);
  SETUP(sigaction(SIGUSR2, &sa, NULL) == 0, "sigaction(SIGUSR2)");
}

/* Polls with short sleeps rather than sigsuspend(): it neither changes the
 * signal mask (signals.c checks it) nor depends on how the engine restarts
 * an interrupted syscall (read_block.c and nanosleep.c test that). */
static inline void wait_for_trigger(void) {
  while (!triggered) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}

/* --- patterns ------------------------------------------------------------- */

/* Byte i of the pattern named seed: a hash, so that pages moved, swapped or
 * zeroed by a bad restore never match by accident. */
static inline uint8_t pat(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + (i >> 3) + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (uint8_t)(z >> ((i & 7) * 8));
}

static inline void fill(void *p, size_t n, uint64_t seed) {
  uint8_t *b = p;
  for (size_t i = 0; i < n; i++)
    b[i] = pat(seed, i);
}

/* Offset of the first byte differing from the pattern, or -1. */
static inline long mismatch(const void *p, size_t n, uint64_t seed) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i] != pat(seed, i))
      return (long)i;
  return -1;
}

/* Offset of the first non-zero byte, or -1. */
static inline long nonzero(const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i])
      return (long)i;
  return -1;
}

/* --- /proc helpers (no malloc) -------------------------------------------- */

/* Reads a whole file into buf (NUL-terminated); returns its length or -1. */
static inline long read_text(const char *path, char *buf, size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  size_t len = 0;
  for (;;) {
    if (len + 1 >= cap) {
      close(fd);
      errno = EFBIG;
      return -1;
    }
    ssize_t r = read(fd, buf + len, cap - 1 - len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      close(fd);
      return -1;
    }
    if (r == 0)
      break;
    len += (size_t)r;
  }
  close(fd);
  buf[len] = '\0';
  return (long)len;
}

/* Rewrites /proc/self/maps text as "start-end perms offset path" lines:
 * dev and inode are left out on purpose. Returns the length. */
static inline size_t normalize_maps(const char *in, char *out, size_t cap) {
  size_t o = 0;
  while (*in) {
    const char *eol = strchr(in, '\n');
    size_t len = eol ? (size_t)(eol - in) : strlen(in);
    const char *f[6];
    size_t fl[6];
    const char *p = in, *end = in + len;
    int n = 0;
    /* Five space-separated fields, then the path (may contain spaces). */
    for (; n < 5 && p < end; n++) {
      while (p < end && *p == ' ')
        p++;
      f[n] = p;
      while (p < end && *p != ' ')
        p++;
      fl[n] = (size_t)(p - f[n]);
    }
    while (p < end && *p == ' ')
      p++;
    f[5] = p;
    fl[5] = (size_t)(end - p);
    if (n == 5) {
      int w = snprintf(out + o, cap - o, "%.*s %.*s %.*s %.*s\n", (int)fl[0], f[0], (int)fl[1], f[1],
                       (int)fl[2], f[2], (int)fl[5], f[5]);
      if (w > 0 && o + (size_t)w < cap)
        o += (size_t)w;
    }
    in = eol ? eol + 1 : end;
  }
  out[o < cap ? o : cap - 1] = '\0';
  return o;
}

/* First line that differs between two texts, as "before: X / after: Y". */
static inline void first_diff_line(const char *a, const char *b, char *out, size_t cap) {
  while (*a || *b) {
    const char *ea = strchr(a, '\n'), *eb = strchr(b, '\n');
    size_t la = ea ? (size_t)(ea - a) : strlen(a);
    size_t lb = eb ? (size_t)(eb - b) : strlen(b);
    if (la != lb || memcmp(a, b, la) != 0) {
      snprintf(out, cap, "before: '%.*s' / after: '%.*s'", (int)la, a, (int)lb, b);
      return;
    }
    a += la + (ea ? 1 : 0);
    b += lb + (eb ? 1 : 0);
  }
  snprintf(out, cap, "(no difference)");
}

/* Value of "Key:" in a /proc status-like text, or NULL. */
static inline const char *status_field(const char *text, const char *key) {
  size_t kl = strlen(key);
  for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
    if (strncmp(p, key, kl) == 0 && p[kl] == ':') {
      p += kl + 1;
      while (*p == ' ' || *p == '\t')
        p++;
      return p;
    }
  }
  return NULL;
}

/* Touches `bytes` of stack below the caller so that the [stack] VMA does not
 * grow later, while checking (its size shows in /proc/self/maps). */
__attribute__((noinline, unused)) static void grow_stack(size_t bytes) {
  volatile char *p = alloca(bytes);
  for (size_t i = 0; i < bytes; i += 4096)
    p[i] = 0;
}

/* Directory for the program's files: argv[1], else $TMPDIR, else ".". */
static inline const char *work_dir(int argc, char **argv) {
  if (argc > 1 && argv[1][0])
    return argv[1];
  const char *t = getenv("TMPDIR");
  return t && *t ? t : ".";
}

static inline double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Entries in /proc/self/fd (including the one opendir uses): compare counts. */
static inline int fd_count(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d)
    return -1;
  while (readdir(d))
    n++;
  closedir(d);
  return n;
}

/* The loopback address of family (AF_INET or AF_INET6), port 0. */
static inline void loopback_addr(int family, struct sockaddr_storage *addr, socklen_t *len) {
  memset(addr, 0, sizeof(*addr));
  if (family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)addr;
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *len = sizeof(*a);
  } else {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)addr;
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_loopback;
    *len = sizeof(*a);
  }
}

#endif
