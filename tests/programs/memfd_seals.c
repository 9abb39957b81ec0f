/* memfd_seals: memfds with every kind of seal, held as fds and as mappings.
 *
 *   fd 10 "sealed-ro"   SHRINK|GROW|WRITE|SEAL, mapped shared read-only after
 *                       the seals (the mapping has no VM_MAYWRITE), mode 0640
 *   fd 11 "future"      FUTURE_WRITE added while a shared writable mapping
 *                       existed: that mapping stays writable, new ones are
 *                       refused, write() is refused
 *   fd 12 "allow"       MFD_ALLOW_SEALING, no seals yet: sealable later
 *   fd 13 "noexec"      MFD_NOEXEC_SEAL (6.3+): F_SEAL_EXEC, no x bits
 *   mapping "noseal"    made without MFD_ALLOW_SEALING (F_SEAL_SEAL), fd closed
 *   mapping "grow-only" SHRINK|GROW, writable shared mapping, fd closed
 *
 * After restore every object must have the same name (fd link and maps),
 * seals, size, mode and contents, and each seal must still forbid what it
 * forbids while the mappings still allow what they allowed.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-selftest: selftest.memfd_seals ${PROGRAM}
// stasis-case: program.memfd_seals ${PROGRAM} --inspect
// stasis-case: program.memfd_seals.cycles3 ${PROGRAM} --cycles 3
#include "common.h"

#include <sys/mman.h>
#include <sys/stat.h>

#define SIZE (2 * 4096 + 123) /* not a whole number of pages */

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

struct obj {
  const char* name;
  int fd; /* fixed fd number, or -1 for a mapping only */
  unsigned char* map;
  int seals;
  mode_t mode;
  char link[128]; /* readlink of the fd, or the maps path */
};

static struct obj objs[6];
static int nobjs;
static int have_noexec;

static int make(const char* name, unsigned flags, int at) {
  int fd = memfd_create(name, flags);
  SETUP(fd >= 0, "memfd_create %s", name);
  SETUP(ftruncate(fd, SIZE) == 0, "ftruncate %s", name);
  unsigned char buf[SIZE];
  fill(buf, SIZE, 7000 + nobjs);
  SETUP(pwrite(fd, buf, SIZE, 0) == SIZE, "pwrite %s", name);
  if (at >= 0) {
    SETUP(dup2(fd, at) == at, "dup2 %s", name);
    close(fd);
    fd = at;
  }
  return fd;
}

static void add(const char* name, int fd, unsigned char* map) {
  struct obj* o = &objs[nobjs++];
  o->name = name;
  o->fd = fd;
  o->map = map;
}

/* The path /proc/self/maps shows for the mapping at p. */
static void maps_name(const void* p, char* out, size_t cap) {
  static char buf[1 << 16];
  out[0] = 0;
  if (read_text("/proc/self/maps", buf, sizeof buf) <= 0) return;
  char want[32];
  snprintf(want, sizeof want, "%lx-", (unsigned long)p);
  for (char* line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
    if (strncmp(line, want, strlen(want)) != 0) continue;
    char* path = strchr(line, '/');
    char* end = strchr(line, '\n');
    if (path && (!end || path < end))
      snprintf(out, cap, "%.*s", (int)(end ? end - path : (long)strlen(path)), path);
    return;
  }
}

/* An fd of the object: its own, or one opened through map_files. */
static int object_fd(const struct obj* o) {
  if (o->fd >= 0) return dup(o->fd);
  char path[128];
  snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", (unsigned long)o->map,
           (unsigned long)o->map + ((SIZE + 4095) & ~4095UL));
  return open(path, O_RDONLY | O_CLOEXEC);
}

static void record(struct obj* o) {
  int fd = object_fd(o);
  SETUP(fd >= 0, "fd of %s", o->name);
  o->seals = fcntl(fd, F_GET_SEALS);
  struct stat st;
  SETUP(fstat(fd, &st) == 0, "fstat %s", o->name);
  o->mode = st.st_mode & 07777;
  close(fd);
  if (o->fd >= 0) {
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", o->fd);
    ssize_t n = readlink(p, o->link, sizeof o->link - 1);
    o->link[n > 0 ? n : 0] = 0;
  } else {
    maps_name(o->map, o->link, sizeof o->link);
  }
}

static void check_same(const struct obj* o) {
  int fd = object_fd(o);
  CHECK(fd >= 0, "%s: no fd (errno %d)", o->name, errno);
  if (fd < 0) return;
  CHECK(fcntl(fd, F_GET_SEALS) == o->seals, "%s: seals %#x, were %#x", o->name,
        fcntl(fd, F_GET_SEALS), o->seals);
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && st.st_size == SIZE, "%s: size %ld", o->name, (long)st.st_size);
  CHECK((st.st_mode & 07777) == o->mode, "%s: mode %o, was %o", o->name, st.st_mode & 07777,
        o->mode);
  static unsigned char buf[SIZE];
  CHECK(pread(fd, buf, SIZE, 0) == SIZE, "%s: pread", o->name);
  long at = mismatch(buf, SIZE, 7000 + (o - objs));
  CHECK(at < 0, "%s: contents differ at %ld", o->name, at);
  if (o->map) {
    at = mismatch(o->map, SIZE, 7000 + (o - objs));
    CHECK(at < 0, "%s: mapped contents differ at %ld", o->name, at);
  }
  char now[128];
  if (o->fd >= 0) {
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", o->fd);
    ssize_t n = readlink(p, now, sizeof now - 1);
    now[n > 0 ? n : 0] = 0;
  } else {
    maps_name(o->map, now, sizeof now);
  }
  CHECK(strcmp(now, o->link) == 0, "%s: named '%s', was '%s'", o->name, now, o->link);
  close(fd);
}

/* errno of a call expected to fail, 0 if it succeeded. */
#define FAILS_WITH(call) ((call) < 0 ? errno : 0)

int main(void) {
  install_trigger(0);
  long page = 4096, maplen = (SIZE + page - 1) & ~(page - 1);

  int fd = make("sealed-ro", MFD_ALLOW_SEALING, 10);
  SETUP(fchmod(fd, 0640) == 0, "fchmod");
  SETUP(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) == 0,
        "seal");
  unsigned char* ro = mmap(NULL, maplen, PROT_READ, MAP_SHARED, fd, 0);
  SETUP(ro != MAP_FAILED, "mmap sealed-ro");
  add("sealed-ro", fd, ro);

  fd = make("future", MFD_ALLOW_SEALING, 11);
  unsigned char* rw = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  SETUP(rw != MAP_FAILED, "mmap future");
  SETUP(fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) == 0, "seal future");
  add("future", fd, rw);

  add("allow", make("allow", MFD_ALLOW_SEALING, 12), NULL);

  fd = memfd_create("probe", MFD_NOEXEC_SEAL);
  have_noexec = fd >= 0;
  if (fd >= 0) close(fd);
  if (have_noexec) add("noexec", make("noexec", MFD_NOEXEC_SEAL, 13), NULL);

  fd = make("noseal", 0, -1);
  unsigned char* ns = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  SETUP(ns != MAP_FAILED, "mmap noseal");
  close(fd);
  add("noseal", -1, ns);

  fd = make("grow-only", MFD_ALLOW_SEALING, -1);
  SETUP(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0, "seal grow-only");
  unsigned char* go = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  SETUP(go != MAP_FAILED, "mmap grow-only");
  close(fd);
  add("grow-only", -1, go);

  for (int i = 0; i < nobjs; i++) record(&objs[i]);
  SETUP(objs[0].seals == (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL), "seals %#x",
        objs[0].seals);
  SETUP(objs[1].seals == F_SEAL_FUTURE_WRITE, "future seals %#x", objs[1].seals);

  READY();
  wait_for_trigger();

  for (int i = 0; i < nobjs; i++) check_same(&objs[i]);

  /* sealed-ro: nothing may write, grow, shrink or seal it. */
  char b = 'x';
  CHECK(FAILS_WITH(pwrite(10, &b, 1, 0)) == EPERM, "sealed-ro: write was not refused");
  CHECK(FAILS_WITH(ftruncate(10, SIZE + 1)) == EPERM, "sealed-ro: grow was not refused");
  CHECK(FAILS_WITH(ftruncate(10, 1)) == EPERM, "sealed-ro: shrink was not refused");
  CHECK(FAILS_WITH(fcntl(10, F_ADD_SEALS, F_SEAL_EXEC)) == EPERM, "sealed-ro: F_SEAL_SEAL is gone");
  CHECK(FAILS_WITH(mprotect(ro, maplen, PROT_READ | PROT_WRITE)) == EACCES,
        "sealed-ro: its read-only mapping may be made writable (VM_MAYWRITE back)");
  void* w = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED, 10, 0);
  CHECK(w == MAP_FAILED && errno == EPERM, "sealed-ro: a writable mapping was allowed");

  /* future: the old mapping still writes; nothing new may. */
  memcpy(rw + 100, "through-old-map", 15);
  char got[16] = {0};
  CHECK(pread(11, got, 15, 100) == 15 && memcmp(got, "through-old-map", 15) == 0,
        "future: a write through the mapping is not in the object");
  CHECK(FAILS_WITH(pwrite(11, &b, 1, 0)) == EPERM, "future: write was not refused");
  w = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED, 11, 0);
  CHECK(w == MAP_FAILED && errno == EPERM, "future: a new writable mapping was allowed");
  CHECK(ftruncate(11, SIZE + 4096) == 0, "future: growing refused (errno %d)", errno);

  /* allow: still sealable. */
  CHECK(fcntl(12, F_ADD_SEALS, F_SEAL_GROW) == 0, "allow: cannot be sealed (errno %d)", errno);

  /* noexec: no x bits, and they cannot be added. */
  if (have_noexec) {
    CHECK((objs[3].seals & F_SEAL_EXEC) && !(objs[3].mode & 0111), "noexec: seals %#x mode %o",
          objs[3].seals, objs[3].mode);
    CHECK(FAILS_WITH(fchmod(13, 0777)) == EPERM, "noexec: chmod +x was not refused");
  }

  /* noseal: no seal can be added; grow-only: writes, but keeps its size. */
  int nfd = object_fd(&objs[have_noexec ? 4 : 3]);
  int gfd = object_fd(&objs[have_noexec ? 5 : 4]);
  CHECK(nfd >= 0 && gfd >= 0, "map_files");
  CHECK(fcntl(nfd, F_GET_SEALS) == F_SEAL_SEAL, "noseal: seals %#x", fcntl(nfd, F_GET_SEALS));
  memcpy(ns, "ns", 2);
  memcpy(go, "go", 2);
  CHECK(pread(gfd, got, 2, 0) == 2 && memcmp(got, "go", 2) == 0, "grow-only: mapping write lost");
  char p[128];
  snprintf(p, sizeof p, "/proc/self/fd/%d", gfd);
  int grw = open(p, O_RDWR);
  CHECK(grw >= 0 && FAILS_WITH(ftruncate(grw, SIZE + 1)) == EPERM,
        "grow-only: grow was not refused");
  return FINISH();
}
