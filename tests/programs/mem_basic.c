/* mem_basic: every kind of private memory a simple process has.
 *
 * Heap (brk and mmap'd malloc), stack, private file mapping with some dirty
 * pages, shared read-only file mapping, anonymous regions with madvise flags,
 * PROT_NONE and read-only regions, zero and non-zero pages. After the trigger
 * the layout (/proc/self/maps) must be identical and every byte intact.
 *
 * Usage: mem_basic [DIR]   (DIR for the temp file; default $TMPDIR or ".")
 */
// Cases (the format is in CMakeLists.txt):
// stasis-case: program.mem_basic ${PROGRAM} --inspect
// stasis-case: program.mem_basic.cycles10 ${PROGRAM} --cycles 10
// Restored into this PID namespace: the PID is free once the original is reaped.
// stasis-case: program.mem_basic.pid_ns_host ${PROGRAM} --restore-arg=--pid-ns=host
// stasis-case: program.mem_basic.leave_running ${PROGRAM} --leave-running
// stasis-case: program.corrupt_page ${PROGRAM} --corrupt flip-page
// stasis-case: program.truncated ${PROGRAM} --corrupt truncate
// stasis-selftest: selftest.mem_basic ${PROGRAM}
#include "common.h"

#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#define PAGE 4096UL
#define NSMALL 64
#define BIG_SIZE (8UL << 20)       /* above the 128 KiB mmap threshold */
#define FILE_PAGES 16
#define HG_SIZE (4UL << 20)
#define MIXED_PAGES 48
#define SBRK_SIZE (256UL * 1024)

static char maps_before[64 << 10], maps_after[64 << 10];
static char raw[256 << 10];
static char smaps[1 << 20];

static void *small[NSMALL];
static size_t small_size[NSMALL];

static int file_dirty(int page) { return page == 2 || page == 5 || page == 11; }

/* Checks that the VMA exactly [start, start+len) has VmFlags token `flag`. */
static void check_vmflag(void *start, size_t len, const char *flag, const char *what) {
  char head[64];
  snprintf(head, sizeof head, "%lx-%lx ", (unsigned long)start, (unsigned long)start + len);
  const char *p = smaps;
  for (;;) {
    p = strstr(p, head);
    if (!p) {
      CHECK(0, "%s: no VMA exactly %s in smaps", what, head);
      return;
    }
    if (p == smaps || p[-1] == '\n')
      break;
    p++;
  }
  const char *vf = strstr(p, "\nVmFlags:");
  if (!vf) {
    CHECK(0, "%s: no VmFlags line", what);
    return;
  }
  vf += 9;
  const char *eol = strchr(vf, '\n');
  size_t n = eol ? (size_t)(eol - vf) : strlen(vf);
  char line[256];
  snprintf(line, sizeof line, "%.*s", (int)n, vf);
  char tok[8];
  snprintf(tok, sizeof tok, " %s ", flag);
  char padded[260];
  snprintf(padded, sizeof padded, "%s ", line);
  CHECK(strstr(padded, tok) != NULL, "%s: VMA %sVmFlags lack '%s':%s", what, head, flag, line);
}

__attribute__((noinline)) static void fill_stack_array(uint8_t *a, size_t n) { fill(a, n, 77); }

int main(int argc, char **argv) {
  install_trigger(SA_RESTART);
  const char *dir = work_dir(argc, argv);
  pid_t pid = getpid();

  /* Small mallocs (brk heap) of assorted sizes and one big (mmap'd) one. */
  for (int i = 0; i < NSMALL; i++) {
    small_size[i] = 16 + (size_t)i * 97;
    small[i] = malloc(small_size[i]);
    SETUP(small[i], "malloc");
    fill(small[i], small_size[i], 1000 + (uint64_t)i);
  }
  uint8_t *big = malloc(BIG_SIZE);
  SETUP(big, "malloc big");
  fill(big, BIG_SIZE, 2);

  /* Temp file: 16 pages of pattern. */
  char path[4096];
  snprintf(path, sizeof path, "%s/mem_basic.%d.dat", dir, (int)pid);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  SETUP(fd >= 0, "open %s", path);
  {
    static uint8_t buf[FILE_PAGES * PAGE];
    fill(buf, sizeof buf, 3);
    SETUP(write(fd, buf, sizeof buf) == (ssize_t)sizeof buf, "write %s", path);
  }
  /* Private mapping: some pages dirtied (anonymous COW copies), the rest
   * clean and backed by the file. */
  uint8_t *fpriv = mmap(NULL, FILE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  SETUP(fpriv != MAP_FAILED, "mmap private");
  for (int pg = 0; pg < FILE_PAGES; pg++)
    if (file_dirty(pg))
      fill(fpriv + pg * PAGE, PAGE, 300 + (uint64_t)pg);
    else
      (void)*(volatile uint8_t *)(fpriv + pg * PAGE); /* fault in, stays clean */
  /* Shared read-only mapping of the same file, at an offset of 4 pages. */
  uint8_t *fshared = mmap(NULL, 8 * PAGE, PROT_READ, MAP_SHARED, fd, 4 * PAGE);
  SETUP(fshared != MAP_FAILED, "mmap shared");
  close(fd);

  /* Anonymous regions with madvise flags, each with contents. */
  uint8_t *hg = mmap(NULL, HG_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(hg != MAP_FAILED, "mmap hg");
  SETUP(madvise(hg, HG_SIZE, MADV_HUGEPAGE) == 0, "MADV_HUGEPAGE");
  fill(hg, HG_SIZE, 4);
  uint8_t *dc = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(dc != MAP_FAILED, "mmap dc");
  SETUP(madvise(dc, 8 * PAGE, MADV_DONTFORK) == 0, "MADV_DONTFORK");
  fill(dc, 8 * PAGE, 5);
  uint8_t *dd = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(dd != MAP_FAILED, "mmap dd");
  SETUP(madvise(dd, 8 * PAGE, MADV_DONTDUMP) == 0, "MADV_DONTDUMP");
  fill(dd, 8 * PAGE, 6);

  /* PROT_NONE never touched, and PROT_NONE hiding contents (the engine must
   * still save them: the program may mprotect it back). */
  uint8_t *none = mmap(NULL, 4 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(none != MAP_FAILED, "mmap none");
  uint8_t *hidden = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(hidden != MAP_FAILED, "mmap hidden");
  fill(hidden, 4 * PAGE, 7);
  SETUP(mprotect(hidden, 4 * PAGE, PROT_NONE) == 0, "mprotect none");

  /* Read-only with contents. */
  uint8_t *ro = mmap(NULL, 6 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(ro != MAP_FAILED, "mmap ro");
  fill(ro, 6 * PAGE, 8);
  SETUP(mprotect(ro, 6 * PAGE, PROT_READ) == 0, "mprotect ro");

  /* Mixed: pattern pages, pages written with zeros, never-touched pages. */
  uint8_t *mixed = mmap(NULL, MIXED_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(mixed != MAP_FAILED, "mmap mixed");
  for (int pg = 0; pg < MIXED_PAGES; pg++)
    if (pg % 3 == 0)
      fill(mixed + pg * PAGE, PAGE, 400 + (uint64_t)pg);
    else if (pg % 3 == 1)
      memset(mixed + pg * PAGE, 0, PAGE);

  /* Populated, all zero. */
  uint8_t *zero = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  SETUP(zero != MAP_FAILED, "mmap zero");

  /* sbrk()-grown heap beyond malloc's. */
  uint8_t *brk_area = sbrk((intptr_t)SBRK_SIZE);
  SETUP(brk_area != (void *)-1, "sbrk");
  fill(brk_area, SBRK_SIZE, 9);
  void *brk_before = sbrk(0);

  /* Stack array. */
  uint8_t stack_arr[32 << 10];
  fill_stack_array(stack_arr, sizeof stack_arr);

  struct timespec mono_before;
  clock_gettime(CLOCK_MONOTONIC, &mono_before);
  grow_stack(256 << 10);

  /* Sanity before READY: the flags this test relies on are really there. */
  SETUP(read_text("/proc/self/smaps", smaps, sizeof smaps) > 0, "read smaps");
  check_vmflag(hg, HG_SIZE, "hg", "MADV_HUGEPAGE region (before dump)");
  check_vmflag(dc, 8 * PAGE, "dc", "MADV_DONTFORK region (before dump)");
  check_vmflag(dd, 8 * PAGE, "dd", "MADV_DONTDUMP region (before dump)");
  if (check_line_)
    return FINISH();

  SETUP(read_text("/proc/self/maps", raw, sizeof raw) > 0, "read maps");
  normalize_maps(raw, maps_before, sizeof maps_before);

  READY();
  wait_for_trigger();

  /* First what checking could disturb: brk and the layout. */
  void *brk_after = sbrk(0);
  CHECK(brk_after == brk_before, "brk %p, expected %p", brk_after, brk_before);
  CHECK(read_text("/proc/self/maps", raw, sizeof raw) > 0, "read maps: %s", strerror(errno));
  normalize_maps(raw, maps_after, sizeof maps_after);
  if (strcmp(maps_before, maps_after) != 0) {
    char diff[400];
    first_diff_line(maps_before, maps_after, diff, sizeof diff);
    CHECK(0, "/proc/self/maps changed: %s", diff);
  }
  CHECK(read_text("/proc/self/smaps", smaps, sizeof smaps) > 0, "read smaps: %s", strerror(errno));
  check_vmflag(hg, HG_SIZE, "hg", "MADV_HUGEPAGE region");
  check_vmflag(dc, 8 * PAGE, "dc", "MADV_DONTFORK region");
  check_vmflag(dd, 8 * PAGE, "dd", "MADV_DONTDUMP region");

  CHECK(getpid() == pid, "getpid() %d, expected %d", (int)getpid(), (int)pid);
  CHECK(syscall(SYS_getpid) == pid, "SYS_getpid %ld, expected %d", syscall(SYS_getpid), (int)pid);

  /* vdso: at the address the auxv says, and its clock agrees with the
   * syscall (a wrong [vvar] gives garbage or a frozen clock). */
  unsigned long vdso = getauxval(AT_SYSINFO_EHDR);
  char vdso_head[64], vdso_line[256] = "";
  snprintf(vdso_head, sizeof vdso_head, "\n%lx-", vdso);
  const char *vl = strstr(maps_after, vdso_head);
  if (vl) {
    const char *eol = strchr(vl + 1, '\n');
    snprintf(vdso_line, sizeof vdso_line, "%.*s", (int)(eol ? eol - vl - 1 : 200), vl + 1);
  }
  CHECK(vdso && strstr(vdso_line, "[vdso]"), "AT_SYSINFO_EHDR %#lx is not the start of [vdso] in maps (line '%s')",
        vdso, vdso_line);
  struct timespec m1, m2, msys;
  clock_gettime(CLOCK_MONOTONIC, &m1);
  syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &msys);
  clock_gettime(CLOCK_MONOTONIC, &m2);
  double b = mono_before.tv_sec + mono_before.tv_nsec / 1e9, a1 = m1.tv_sec + m1.tv_nsec / 1e9,
         a2 = m2.tv_sec + m2.tv_nsec / 1e9, s = msys.tv_sec + msys.tv_nsec / 1e9;
  CHECK(a1 > b, "CLOCK_MONOTONIC went back: %.6f before dump, %.6f after", b, a1);
  CHECK(a2 >= a1, "CLOCK_MONOTONIC not monotonic after restore: %.6f then %.6f", a1, a2);
  CHECK(s >= a1 - 0.01 && s <= a2 + 0.01, "vdso clock %.6f..%.6f disagrees with syscall clock %.6f", a1, a2, s);

  long off;
  for (int i = 0; i < NSMALL; i++) {
    off = mismatch(small[i], small_size[i], 1000 + (uint64_t)i);
    CHECK(off < 0, "malloc #%d (%p, %zu bytes) differs at offset %ld", i, small[i], small_size[i], off);
  }
  off = mismatch(big, BIG_SIZE, 2);
  CHECK(off < 0, "big malloc %p differs at offset %ld", (void *)big, off);
  off = mismatch(stack_arr, sizeof stack_arr, 77);
  CHECK(off < 0, "stack array %p differs at offset %ld", (void *)stack_arr, off);

  for (int pg = 0; pg < FILE_PAGES; pg++) {
    if (file_dirty(pg))
      off = mismatch(fpriv + pg * PAGE, PAGE, 300 + (uint64_t)pg);
    else {
      /* Clean page: the file's bytes at that page. */
      off = -1;
      for (size_t i = 0; i < PAGE; i++)
        if (fpriv[pg * PAGE + i] != pat(3, pg * PAGE + i)) {
          off = (long)i;
          break;
        }
    }
    CHECK(off < 0, "private file mapping page %d (%s) differs at offset %ld", pg, file_dirty(pg) ? "dirty" : "clean",
          off);
  }
  for (size_t i = 0; i < 8 * PAGE; i++)
    if (fshared[i] != pat(3, 4 * PAGE + i)) {
      CHECK(0, "shared file mapping differs at offset %zu", i);
      break;
    }

  off = mismatch(hg, HG_SIZE, 4);
  CHECK(off < 0, "MADV_HUGEPAGE region differs at offset %ld", off);
  off = mismatch(dc, 8 * PAGE, 5);
  CHECK(off < 0, "MADV_DONTFORK region differs at offset %ld", off);
  off = mismatch(dd, 8 * PAGE, 6);
  CHECK(off < 0, "MADV_DONTDUMP region differs at offset %ld", off);
  off = mismatch(ro, 6 * PAGE, 8);
  CHECK(off < 0, "read-only region differs at offset %ld", off);
  for (int pg = 0; pg < MIXED_PAGES; pg++) {
    if (pg % 3 == 0)
      off = mismatch(mixed + pg * PAGE, PAGE, 400 + (uint64_t)pg);
    else
      off = nonzero(mixed + pg * PAGE, PAGE);
    CHECK(off < 0, "mixed region page %d (%s) differs at offset %ld", pg,
          pg % 3 == 0 ? "pattern" : pg % 3 == 1 ? "written zero" : "untouched", off);
  }
  off = nonzero(zero, 16 * PAGE);
  CHECK(off < 0, "populated zero region has a non-zero byte at offset %ld", off);
  off = mismatch(brk_area, SBRK_SIZE, 9);
  CHECK(off < 0, "sbrk area differs at offset %ld", off);

  /* Contents behind PROT_NONE, and the untouched PROT_NONE region is zero. */
  CHECK(mprotect(hidden, 4 * PAGE, PROT_READ) == 0, "mprotect hidden: %s", strerror(errno));
  off = mismatch(hidden, 4 * PAGE, 7);
  CHECK(off < 0, "region hidden behind PROT_NONE differs at offset %ld", off);
  CHECK(mprotect(none, 4 * PAGE, PROT_READ) == 0, "mprotect none: %s", strerror(errno));
  off = nonzero(none, 4 * PAGE);
  CHECK(off < 0, "PROT_NONE region has a non-zero byte at offset %ld", off);

  /* The memory is usable, not only readable. */
  memset(mixed, 0xab, MIXED_PAGES * PAGE);
  CHECK(mixed[MIXED_PAGES * PAGE - 1] == 0xab, "mixed region not writable");
  void *more = malloc(1 << 20);
  CHECK(more != NULL, "malloc after restore");
  free(more);
  for (int i = 0; i < NSMALL; i++)
    free(small[i]);
  free(big);

  unlink(path);
  return FINISH();
}
