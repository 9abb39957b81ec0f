/* Nine threads, each parked differently when the dump comes: in a futex
 * (cond wait, with and without an absolute deadline), read(), nanosleep(),
 * poll(), epoll_wait(), sigwaitinfo(), or computing. Every thread has its own signal mask,
 * TLS value, name and (some) alternate stack. After restore each thread
 * checks its own TID, TLS, mask, name and altstack, then finishes its wait
 * the normal way (woken by main) and reports; main checks the reports.
 */
// Cases (the format is in CMakeLists.txt):
// Seven threads parked in futex, read, nanosleep, poll, sigwaitinfo or computing.
// stasis-case: program.threads ${PROGRAM}
// stasis-case: program.threads.cycles5 ${PROGRAM} --cycles 5
#include "common.h" /* first: it defines _GNU_SOURCE */

#include <poll.h>
#include <sys/epoll.h>
#include <pthread.h>
#include <sys/syscall.h>

#define NTHREADS 8

enum role { COND, COND_DEADLINE, READ, SLEEP, POLL, SIGWAIT, COMPUTE, EPOLL };
static const char *role_names[] = {"cond", "cond-deadline", "read", "sleep", "poll", "sigwait", "compute", "epoll"};

struct worker {
  pthread_t thread;
  int index;
  pid_t tid;       /* gettid() before the dump */
  sigset_t mask;   /* the mask it set for itself */
  int ready;
  int done;
  char failure[300];
};

static struct worker workers[NTHREADS];
static __thread long tls_value;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int go; /* protected by mu: main sets it after the trigger */
static int pipes[3][2];
static int epfd;
static volatile long compute_acc, compute_steps;
static char altstacks[NTHREADS][65536];

static void fail_worker(struct worker *w, const char *what) {
  if (!w->failure[0]) snprintf(w->failure, sizeof w->failure, "thread %s: %s", role_names[w->index], what);
}

/* What every thread checks about itself once it wakes. */
static void check_self(struct worker *w) {
  char buf[200];
  if ((pid_t)syscall(SYS_gettid) != w->tid) fail_worker(w, "TID changed");
  if (tls_value != 1000 + w->index) fail_worker(w, "TLS value changed");
  sigset_t now;
  pthread_sigmask(SIG_SETMASK, NULL, &now);
  for (int s = 1; s < 65; s++) {
    if (s == 32 || s == 33) continue; /* glibc internal */
    if (sigismember(&now, s) != sigismember(&w->mask, s)) {
      snprintf(buf, sizeof buf, "signal %d mask bit changed", s);
      fail_worker(w, buf);
      break;
    }
  }
  char name[32] = {0};
  pthread_getname_np(pthread_self(), name, sizeof name);
  snprintf(buf, sizeof buf, "w-%s", role_names[w->index]);
  buf[15] = 0;
  if (strcmp(name, buf) != 0) fail_worker(w, "thread name changed");
  stack_t ss;
  sigaltstack(NULL, &ss);
  int want_alt = w->index % 2 == 0;
  if (want_alt && (ss.ss_sp != altstacks[w->index] || ss.ss_size != sizeof altstacks[0]))
    fail_worker(w, "sigaltstack changed");
  if (!want_alt && !(ss.ss_flags & SS_DISABLE)) fail_worker(w, "sigaltstack appeared");
}

static void wait_go(void) {
  pthread_mutex_lock(&mu);
  while (!go) pthread_cond_wait(&cond, &mu);
  pthread_mutex_unlock(&mu);
}

static void park(struct worker *w) {
  char c;
  switch (w->index) {
    case COND:
      wait_go();
      break;
    case COND_DEADLINE: {
      struct timespec deadline;
      clock_gettime(CLOCK_REALTIME, &deadline);
      deadline.tv_sec += 600;
      pthread_mutex_lock(&mu);
      while (!go) {
        if (pthread_cond_timedwait(&cond, &mu, &deadline) == ETIMEDOUT) fail_worker(w, "timed out");
      }
      pthread_mutex_unlock(&mu);
      break;
    }
    case READ:
      if (read(pipes[0][0], &c, 1) != 1) fail_worker(w, "read did not return the byte");
      break;
    case SLEEP: {
      struct timespec t0, t1, req = {3, 0};
      clock_gettime(CLOCK_MONOTONIC, &t0);
      if (nanosleep(&req, NULL) != 0) fail_worker(w, "nanosleep failed");
      clock_gettime(CLOCK_MONOTONIC, &t1);
      if (t1.tv_sec - t0.tv_sec < 3 && (t1.tv_sec - t0.tv_sec) * 1000000000L + t1.tv_nsec - t0.tv_nsec < 3000000000L)
        fail_worker(w, "nanosleep was short");
      wait_go();
      break;
    }
    case POLL: {
      struct pollfd p = {pipes[1][0], POLLIN, 0};
      int r;
      while ((r = poll(&p, 1, -1)) < 0 && errno == EINTR) {
      }
      if (r != 1 || read(pipes[1][0], &c, 1) != 1) fail_worker(w, "poll did not report the byte");
      break;
    }
    case SIGWAIT: {
      sigset_t set;
      sigemptyset(&set);
      sigaddset(&set, SIGRTMIN + 2);
      siginfo_t info;
      int r;
      while ((r = sigwaitinfo(&set, &info)) < 0 && errno == EINTR) {
      }
      if (r != SIGRTMIN + 2 || info.si_value.sival_int != 4242) fail_worker(w, "sigwaitinfo got the wrong signal");
      break;
    }
    case EPOLL: {
      /* epoll_wait reports EINTR after any stop; signal(7) says retry. */
      struct epoll_event ev;
      int r;
      while ((r = epoll_wait(epfd, &ev, 1, -1)) < 0 && errno == EINTR) {
      }
      if (r != 1 || ev.data.u64 != 0x5eed || read(pipes[2][0], &c, 1) != 1) fail_worker(w, "epoll_wait did not report the pipe");
      break;
    }
    case COMPUTE:
      /* acc always equals steps * (steps + 1) / 2 between iterations. */
      for (;;) {
        pthread_mutex_lock(&mu);
        int stop = go;
        pthread_mutex_unlock(&mu);
        if (stop) break;
        long s = compute_steps + 1;
        compute_acc += s;
        compute_steps = s;
      }
      if (compute_acc != compute_steps * (compute_steps + 1) / 2) fail_worker(w, "computation went wrong");
      break;
  }
}

static void *run(void *arg) {
  struct worker *w = arg;
  tls_value = 1000 + w->index;
  w->tid = (pid_t)syscall(SYS_gettid);
  char name[16];
  snprintf(name, sizeof name, "w-%s", role_names[w->index]);
  pthread_setname_np(pthread_self(), name);
  /* A different mask per thread; SIGRTMIN+2 blocked for sigwaitinfo. */
  sigemptyset(&w->mask);
  sigaddset(&w->mask, SIGRTMIN + 2);
  for (int s = SIGRTMIN + 4; s < SIGRTMIN + 4 + w->index; s++) sigaddset(&w->mask, s);
  if (w->index % 3 == 0) sigaddset(&w->mask, SIGHUP);
  pthread_sigmask(SIG_SETMASK, &w->mask, NULL);
  if (w->index % 2 == 0) {
    stack_t ss = {altstacks[w->index], 0, sizeof altstacks[0]};
    sigaltstack(&ss, NULL);
  }
  __atomic_store_n(&w->ready, 1, __ATOMIC_SEQ_CST);
  park(w);
  check_self(w);
  __atomic_store_n(&w->done, 1, __ATOMIC_SEQ_CST);
  return NULL;
}

int main(void) {
  install_trigger(0);
  for (int i = 0; i < 3; i++) SETUP(pipe(pipes[i]) == 0, "pipe");
  epfd = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x5eed};
  SETUP(epfd >= 0 && epoll_ctl(epfd, EPOLL_CTL_ADD, pipes[2][0], &ev) == 0, "epoll");
  /* The process-wide default: SIGRTMIN+2 blocked everywhere, for sigwait. */
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGRTMIN + 2);
  pthread_sigmask(SIG_BLOCK, &block, NULL);
  for (int i = 0; i < NTHREADS; i++) {
    workers[i].index = i;
    SETUP(pthread_create(&workers[i].thread, NULL, run, &workers[i]) == 0, "pthread_create");
  }
  for (int i = 0; i < NTHREADS; i++)
    while (!__atomic_load_n(&workers[i].ready, __ATOMIC_SEQ_CST)) usleep(1000);
  usleep(100 * 1000); /* let each reach its blocking call */
  pid_t pid = getpid();
  READY();
  wait_for_trigger();

  CHECK(getpid() == pid, "getpid changed");
  long steps_before = compute_steps;
  usleep(50 * 1000);
  CHECK(compute_steps > steps_before, "the computing thread does not run after restore");
  /* Wake every parked thread the normal way. */
  char c = 'x';
  CHECK(write(pipes[0][1], &c, 1) == 1, "write to read pipe");
  CHECK(write(pipes[1][1], &c, 1) == 1, "write to poll pipe");
  CHECK(write(pipes[2][1], &c, 1) == 1, "write to epoll pipe");
  union sigval v = {.sival_int = 4242};
  CHECK(pthread_sigqueue(workers[SIGWAIT].thread, SIGRTMIN + 2, v) == 0, "pthread_sigqueue");
  pthread_mutex_lock(&mu);
  go = 1;
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&mu);
  for (int i = 0; i < NTHREADS; i++) {
    pthread_join(workers[i].thread, NULL);
    CHECK(workers[i].done, "thread %s did not finish", role_names[i]);
    CHECK(!workers[i].failure[0], "%s", workers[i].failure);
  }
  return FINISH();
}
