/* precopy_writer: memory that keeps changing while `dump --leave-running`
 * pre-copies it, so that a page taken at the wrong moment shows.
 *
 * A 64 MiB region (THP allowed) is split between NTHREADS writer threads;
 * its last quarter is never written after setup. Iteration k of a writer
 * rewrites one of its pages: most often one of its hot pages, every 64th
 * time one of its 16 rare pages. A page holds its sequence number (the
 * iteration that wrote it, 0 for setup) and a pattern made from its index
 * and that number. Each writer keeps, in its own state pages, the sequence
 * number it last wrote to each of its pages, and checks a page before it
 * rewrites it: an image mixing pages from different moments (a pre-copied
 * page the tree wrote later, or state pages older than data pages) makes a
 * restored writer find a page that is not what it wrote last. After the
 * trigger the writers stop and every page is checked.
 *
 * The writers run in bursts with short sleeps, so that the dump always
 * finds them writing without taking a whole core.
 */
// Cases (the format is in CMakeLists.txt):
// Three threads rewriting a 64 MiB region while --leave-running pre-copies
// it (src/mem/precopy.h); each image is restored in place of the
// original, and the writers catch any page from the wrong moment.
// stasis-case: program.precopy_writer.leave_running ${PROGRAM} --leave-running --restore-left-running --cycles 4
// As nobody: the injected userfaultfd is UFFD_USER_MODE_ONLY, allowed without
// CAP_SYS_PTRACE.
// stasis-case: program.precopy_writer.leave_running.nobody ${PROGRAM} --leave-running --restore-left-running --cycles 2 --user nobody
// stasis-selftest: selftest.precopy_writer ${PROGRAM}
#include "common.h" /* first: it defines _GNU_SOURCE */

#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>

#define PAGE 4096UL
#define NTHREADS 3
#define REGION (64UL << 20)
#define NPAGES (REGION / PAGE)
#define SLICE (NPAGES / 4)           /* pages per writer; the last quarter is never written */
#define NRARE 16
#define NHOT (SLICE - NRARE)
#define WORDS (PAGE / 8)
#define BURST 256

struct state {
  uint64_t iter;          /* iterations done */
  uint64_t last[SLICE];   /* sequence number last written to each page */
};

static uint64_t *region;          /* NPAGES pages */
static struct state *states;      /* one per writer, in its own mapping */
static atomic_int stop, stopped;
static atomic_long errors;
static char first_error[300];

static inline uint64_t word(uint64_t page, uint64_t seq, uint64_t i) {
  uint64_t z = (page << 40) ^ (seq << 9) ^ i;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void write_page(uint64_t page, uint64_t seq) {
  uint64_t *w = region + page * WORDS;
  for (uint64_t i = 1; i < WORDS; i++) w[i] = word(page, seq, i);
  w[0] = seq;
}

/* 0 if page holds sequence number seq with its pattern. */
static int page_differs(uint64_t page, uint64_t seq) {
  const uint64_t *w = region + page * WORDS;
  if (w[0] != seq)
    return 1;
  for (uint64_t i = 1; i < WORDS; i++)
    if (w[i] != word(page, seq, i))
      return 1;
  return 0;
}

static void report(const char *fmt, uint64_t a, uint64_t b, uint64_t c) {
  if (atomic_fetch_add(&errors, 1) == 0)
    snprintf(first_error, sizeof first_error, fmt, (unsigned long)a, (unsigned long)b,
             (unsigned long)c);
}

static uint64_t choose(uint64_t k) {
  if (k % 64 == 63)
    return NHOT + (k / 64) % NRARE;
  return (k * 2654435761ull) % NHOT;
}

static void *writer(void *arg) {
  long t = (long)arg;
  struct state *st = &states[t];
  uint64_t base = (uint64_t)t * SLICE;
  while (!atomic_load(&stop)) {
    for (int b = 0; b < BURST; b++) {
      uint64_t k = st->iter;
      uint64_t p = choose(k);
      if (page_differs(base + p, st->last[p]))
        report("writer page %lu: holds sequence %lu, last written %lu", base + p,
               region[(base + p) * WORDS], st->last[p]);
      write_page(base + p, k + 1);
      st->last[p] = k + 1;
      st->iter = k + 1;
    }
    struct timespec ts = {0, 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  atomic_fetch_add(&stopped, 1);
  for (;;)
    pause();
  return NULL;
}

int main(void) {
  install_trigger(SA_RESTART);
  void *raw = mmap(NULL, REGION + (2UL << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
  SETUP(raw != MAP_FAILED, "mmap region");
  region = (uint64_t *)(((uintptr_t)raw + (2UL << 20) - 1) & ~((2UL << 20) - 1));
  SETUP(madvise(region, REGION, MADV_HUGEPAGE) == 0 || errno == EINVAL, "madvise(MADV_HUGEPAGE)");
  states = mmap(NULL, NTHREADS * sizeof(struct state), PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(states != MAP_FAILED, "mmap states");
  for (uint64_t p = 0; p < NPAGES; p++)
    write_page(p, 0);
  pthread_t threads[NTHREADS];
  for (long t = 0; t < NTHREADS; t++)
    SETUP(pthread_create(&threads[t], NULL, writer, (void *)t) == 0, "pthread_create");
  READY();
  wait_for_trigger();

  /* The writers (restored ones too) must still be going: two bursts each. */
  uint64_t at_trigger[NTHREADS];
  for (int t = 0; t < NTHREADS; t++)
    at_trigger[t] = states[t].iter;
  double deadline = mono_now() + 20;
  for (int t = 0; t < NTHREADS; t++) {
    while (states[t].iter < at_trigger[t] + 2 * BURST && mono_now() < deadline) {
      struct timespec w = {0, 1000 * 1000};
      nanosleep(&w, NULL);
    }
    CHECK(states[t].iter >= at_trigger[t] + 2 * BURST,
          "writer %d made no progress after the trigger (%lu iterations)", t,
          (unsigned long)states[t].iter);
  }
  atomic_store(&stop, 1);
  while (atomic_load(&stopped) < NTHREADS) {
    struct timespec w = {0, 1000 * 1000};
    nanosleep(&w, NULL);
  }
  CHECK(atomic_load(&errors) == 0, "%ld pages found changed behind a writer's back; first: %s",
        atomic_load(&errors), first_error);
  for (int t = 0; t < NTHREADS; t++) {
    uint64_t rare_written = 0;
    for (uint64_t p = 0; p < SLICE; p++) {
      uint64_t page = (uint64_t)t * SLICE + p;
      CHECK(!page_differs(page, states[t].last[p]),
            "page %lu: holds sequence %lu, its writer last wrote %lu", (unsigned long)page,
            (unsigned long)region[page * WORDS], (unsigned long)states[t].last[p]);
      if (p >= NHOT && states[t].last[p] != 0)
        rare_written++;
    }
    CHECK(rare_written > 0, "writer %d never wrote a rare page", t);
  }
  for (uint64_t page = NTHREADS * SLICE; page < NPAGES; page++)
    CHECK(!page_differs(page, 0), "never-written page %lu changed (sequence %lu)",
          (unsigned long)page, (unsigned long)region[page * WORDS]);
  return FINISH();
}
