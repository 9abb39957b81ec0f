/* Copy-on-write memory after fork: the parent fills 64 MiB, forks two
 * children; each child writes one page of its own and drops (MADV_DONTNEED)
 * another. After restore every process sees exactly its own view, and the
 * 64 MiB are still shared: the parent's smaps must show them Shared_Dirty
 * (asserted). The tree's RSS before and after is printed to the log.
 */
// Cases (the format is in CMakeLists.txt):
// Pages shared copy-on-write after fork stay shared: the pre-copy and the
// frozen reads must not unshare them (process_vm_readv pins, and pinning
// unshares), which the program checks after the trigger.
// stasis-case: program.cow.leave_running ${PROGRAM} --leave-running
// 64 MiB shared copy-on-write by a parent and two children stays shared.
// stasis-case: program.cow ${PROGRAM}
// stasis-case: program.cow.cycles3 ${PROGRAM} --cycles 3
#include "common.h"

#include <sys/mman.h>
#include <sys/wait.h>

#define SIZE (64u << 20)
#define PAGE 4096u

static unsigned char *big;

/* Shared_Dirty of the mapping holding big, in KiB. */
static long shared_dirty_kib(void) {
  static char buf[1 << 20];
  if (read_text("/proc/self/smaps", buf, sizeof buf) <= 0) return -1;
  char want[32];
  snprintf(want, sizeof want, "%lx-", (unsigned long)big);
  char *at = strstr(buf, want);
  if (!at) return -1;
  char *sd = strstr(at, "Shared_Dirty:");
  return sd ? strtol(sd + 13, NULL, 10) : -1;
}

static long tree_rss_kib(pid_t *kids, int n) {
  char path[64], buf[4096];
  long total = 0;
  for (int i = -1; i < n; i++) {
    snprintf(path, sizeof path, "/proc/%d/status", i < 0 ? getpid() : kids[i]);
    if (read_text(path, buf, sizeof buf) <= 0) continue;
    char *r = strstr(buf, "VmRSS:");
    if (r) total += strtol(r + 6, NULL, 10);
  }
  return total;
}

static void child(int k) {
  /* Its own page, and a page it no longer has. */
  big[k * PAGE + 5] = (unsigned char)(0xA0 + k);
  madvise(big + (10 + k) * PAGE, PAGE, MADV_DONTNEED);
  wait_for_trigger();
  int bad = 0;
  for (size_t off = 0; off < SIZE && !bad; off += PAGE) {
    size_t page = off / PAGE;
    if (page == (size_t)(10 + k)) {
      bad = nonzero(big + off, PAGE) >= 0 ? 2 : 0;  /* dropped: anonymous zero page */
    } else if (page == (size_t)k) {
      bad = big[off + 5] != (unsigned char)(0xA0 + k) ? 3 : 0;
    } else {
      bad = mismatch(big + off, PAGE, 7 + page) >= 0 ? 4 : 0;
    }
  }
  _exit(bad);
}

int main(void) {
  install_trigger(0);
  big = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(big != MAP_FAILED, "mmap");
  for (size_t off = 0; off < SIZE; off += PAGE) fill(big + off, PAGE, 7 + off / PAGE);
  pid_t kids[2];
  for (int k = 0; k < 2; k++) {
    kids[k] = fork();
    if (kids[k] == 0) child(k);
  }
  usleep(200000);
  long rss_before = tree_rss_kib(kids, 2);
  READY();
  wait_for_trigger();

  long rss_after = tree_rss_kib(kids, 2);
  long shared = shared_dirty_kib();
  printf("tree rss %ld KiB before, %ld KiB after; parent Shared_Dirty %ld KiB\n", rss_before, rss_after, shared);
  CHECK(shared > (long)(SIZE / 1024) * 9 / 10, "the 64 MiB are no longer shared with the children (Shared_Dirty %ld KiB)",
        shared);
  for (size_t off = 0; off < SIZE; off += PAGE) {
    if (mismatch(big + off, PAGE, 7 + off / PAGE) >= 0) {
      CHECK(0, "parent page %zu changed", off / PAGE);
      break;
    }
  }
  for (int k = 0; k < 2; k++) {
    kill(kids[k], SIGUSR2);
    int st;
    CHECK(waitpid(kids[k], &st, 0) == kids[k] && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "child %d sees wrong memory (status %#x)", k, st);
  }
  return FINISH();
}
