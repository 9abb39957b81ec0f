/* Shared memory between a parent and its child, of every kind the engine
 * carries: MAP_SHARED|MAP_ANONYMOUS ("/dev/zero (deleted)"), a POSIX shm
 * object that was unlinked ("/dev/shm/... (deleted)"), a memfd whose fd is
 * closed ("/memfd:... (deleted)"), and a named /dev/shm file that still
 * exists. After restore, the child writes into each and the parent must see
 * it (they are still one object), the contents from before are intact, and
 * /proc/self/maps names each mapping as before.
 */
// Cases (the format is in CMakeLists.txt):
// Shared anonymous memory, unlinked POSIX shm, a memfd and a named /dev/shm
// file, all shared by a parent and its child.
// stasis-case: program.shmem ${PROGRAM}
#include "common.h"

#include <sys/mman.h>
#include <sys/wait.h>

#define SIZE (3 * 4096 + 100) /* not a whole number of pages */

struct region {
  const char *name;
  unsigned char *p;
  char maps_name[128];
};

static struct region regions[4];
static int nregions;

static void add(const char *name, void *p) {
  SETUP(p != MAP_FAILED, "mmap %s", name);
  regions[nregions].name = name;
  regions[nregions].p = p;
  fill(p, SIZE, 1000 + nregions);
  nregions++;
}

/* The path /proc/self/maps shows for the mapping at p. */
static void maps_name(const void *p, char *out, size_t cap) {
  static char buf[1 << 16];
  out[0] = 0;
  if (read_text("/proc/self/maps", buf, sizeof buf) <= 0) return;
  char want[32];
  snprintf(want, sizeof want, "%lx-", (unsigned long)p);
  for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
    if (strncmp(line, want, strlen(want)) != 0) continue;
    char *path = strchr(line, '/');
    char *end = strchr(line, '\n');
    if (path && (!end || path < end)) snprintf(out, cap, "%.*s", (int)(end ? end - path : (long)strlen(path)), path);
    return;
  }
}

int main(void) {
  install_trigger(0);
  add("shared anonymous", mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));

  char shm_name[64];
  snprintf(shm_name, sizeof shm_name, "/stasis-test-%d", getpid());
  int fd = shm_open(shm_name, O_RDWR | O_CREAT | O_EXCL, 0600);
  SETUP(fd >= 0 && ftruncate(fd, SIZE) == 0, "shm_open");
  add("unlinked POSIX shm", mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  close(fd);
  shm_unlink(shm_name);

  fd = memfd_create("stasis-memfd", 0);
  SETUP(fd >= 0 && ftruncate(fd, SIZE) == 0, "memfd_create");
  add("memfd", mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  close(fd);

  char named[128];
  snprintf(named, sizeof named, "/dev/shm/stasis-named-%d", getpid());
  fd = open(named, O_RDWR | O_CREAT | O_TRUNC, 0600);
  SETUP(fd >= 0 && ftruncate(fd, SIZE) == 0, "open %s", named);
  add("named /dev/shm file", mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  close(fd);

  for (int i = 0; i < nregions; i++) maps_name(regions[i].p, regions[i].maps_name, sizeof regions[i].maps_name);

  pid_t child = fork();
  if (child == 0) {
    wait_for_trigger();
    /* Intact contents, then a write the parent must see. */
    for (int i = 0; i < nregions; i++) {
      if (mismatch(regions[i].p, SIZE, 1000 + i) >= 0) _exit(10 + i);
      memcpy(regions[i].p + SIZE - 10, "from-child", 10);
    }
    _exit(0);
  }
  usleep(100000);
  READY();
  wait_for_trigger();

  for (int i = 0; i < nregions; i++) {
    long at = mismatch(regions[i].p, SIZE, 1000 + i);
    CHECK(at < 0, "%s: contents differ at offset %ld", regions[i].name, at);
    char now[128];
    maps_name(regions[i].p, now, sizeof now);
    CHECK(strcmp(now, regions[i].maps_name) == 0, "%s: maps shows '%s', was '%s'", regions[i].name, now,
          regions[i].maps_name);
  }
  kill(child, SIGUSR2);
  int st;
  CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st), "child did not exit");
  CHECK(WEXITSTATUS(st) == 0, "child found region %d changed", WEXITSTATUS(st) - 10);
  for (int i = 0; i < nregions; i++) {
    CHECK(memcmp(regions[i].p + SIZE - 10, "from-child", 10) == 0, "%s: the child's write is not visible: no longer shared",
          regions[i].name);
  }
  unlink(named);
  return FINISH();
}
