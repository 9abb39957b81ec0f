/* signals: dispositions, blocked mask, pending signals (process and thread
 * queues, with their siginfo) and the alternate signal stack.
 *
 * After the trigger: every sigaction 1..64 as before, same mask, same
 * pending sets (shared and per-thread), same sigaltstack; then each pending
 * signal is unblocked in turn and its handler must run with the right
 * siginfo, in queue order, on the alternate stack where SA_ONSTACK says so.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-case: program.signals ${PROGRAM}
// stasis-selftest: selftest.signals ${PROGRAM}
#include "common.h"

#include <sys/syscall.h>

#define ALTSTACK_SIZE (64 << 10)

struct hit {
  int sig, code, value;
  pid_t pid;
  int on_alt;        /* a local of the handler lies inside the altstack */
  int ss_onstack;    /* sigaltstack() said SS_ONSTACK inside the handler */
  uint64_t blocked;  /* mask while the handler ran, bit sig-1 */
};

static struct hit hits[16];
static volatile int nhits;
static char *altstack;

static uint64_t mask_bits(const sigset_t *s) {
  uint64_t m = 0;
  for (int sig = 1; sig <= 64; sig++)
    if (sigismember(s, sig) == 1)
      m |= 1ull << (sig - 1);
  return m;
}

static void record(int sig, const siginfo_t *si, void *local) {
  if (nhits >= 16)
    return;
  struct hit *h = &hits[nhits];
  h->sig = sig;
  h->code = si ? si->si_code : 0;
  h->value = si ? si->si_value.sival_int : 0;
  h->pid = si ? si->si_pid : 0;
  h->on_alt = (char *)local >= altstack && (char *)local < altstack + ALTSTACK_SIZE;
  stack_t ss;
  h->ss_onstack = sigaltstack(NULL, &ss) == 0 && (ss.ss_flags & SS_ONSTACK);
  sigset_t cur;
  sigprocmask(SIG_BLOCK, NULL, &cur);
  h->blocked = mask_bits(&cur);
  nhits++;
}

static void h_info(int sig, siginfo_t *si, void *uc) {
  char local;
  (void)uc;
  record(sig, si, &local);
}

static void h_plain(int sig) {
  char local;
  record(sig, NULL, &local);
}

/* What we install: handler, flags, mask. */
struct disp {
  int sig;
  void *handler; /* h_info, h_plain, SIG_IGN */
  int flags;
  int mask[3];   /* 0-terminated */
};

static int SIGA, SIGB, SIGC, SIGD; /* RT signals, set from SIGRTMIN at run time */

static struct sigaction before[65];

static int skip(int sig) { return sig == SIGKILL || sig == SIGSTOP || sig == 32 || sig == 33; }

static uint64_t bit(int sig) { return 1ull << (sig - 1); }

static uint64_t status_hex(const char *text, const char *key) {
  const char *v = status_field(text, key);
  return v ? strtoull(v, NULL, 16) : ~0ull;
}

/* Unblocks one signal and checks the handler calls it caused. */
static void deliver(int sig, int expect_hits) {
  int start = nhits;
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, sig);
  sigprocmask(SIG_UNBLOCK, &s, NULL);
  CHECK(nhits - start == expect_hits, "unblocking signal %d ran %d handler calls, expected %d", sig, nhits - start,
        expect_hits);
}

int main(void) {
  static char txt[16 << 10];
  SIGA = SIGRTMIN + 2; /* two instances queued to the process */
  SIGB = SIGRTMIN + 4; /* one instance queued to the thread */
  SIGC = SIGRTMIN + 5; /* ignored */
  SIGD = SIGRTMIN + 7; /* only in masks */
  pid_t pid = getpid();

  altstack = malloc(ALTSTACK_SIZE);
  SETUP(altstack, "malloc");
  stack_t ss = {.ss_sp = altstack, .ss_size = ALTSTACK_SIZE, .ss_flags = 0};
  SETUP(sigaltstack(&ss, NULL) == 0, "sigaltstack");

  install_trigger(SA_RESTART);
  const struct disp disps[] = {
      {SIGUSR1, (void *)h_info, SA_SIGINFO | SA_ONSTACK, {SIGHUP, 0}},
      {SIGA, (void *)h_info, SA_SIGINFO | SA_RESTART, {SIGINT, SIGD, 0}},
      {SIGB, (void *)h_info, SA_SIGINFO | SA_RESETHAND, {0}},
      {SIGTERM, (void *)h_plain, SA_NODEFER, {SIGQUIT, SIGUSR1, 0}},
      {SIGHUP, (void *)h_plain, SA_RESTART | SA_ONSTACK, {SIGALRM, 0}},
      {SIGALRM, (void *)h_info, SA_SIGINFO | SA_NODEFER | SA_RESETHAND | SA_RESTART, {SIGTERM, 0}},
      {SIGPIPE, (void *)SIG_IGN, 0, {0}},
      {SIGTSTP, (void *)SIG_IGN, SA_RESTART, {SIGCHLD, 0}},
      {SIGC, (void *)SIG_IGN, 0, {0}},
  };
  for (size_t i = 0; i < sizeof disps / sizeof disps[0]; i++) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    if (disps[i].flags & SA_SIGINFO)
      sa.sa_sigaction = (void (*)(int, siginfo_t *, void *))disps[i].handler;
    else
      sa.sa_handler = (void (*)(int))disps[i].handler;
    sa.sa_flags = disps[i].flags;
    sigemptyset(&sa.sa_mask);
    for (int j = 0; disps[i].mask[j]; j++)
      sigaddset(&sa.sa_mask, disps[i].mask[j]);
    SETUP(sigaction(disps[i].sig, &sa, NULL) == 0, "sigaction(%d)", disps[i].sig);
  }

  /* Blocked: the pending ones plus a few that stay quiet. */
  sigset_t blocked;
  sigemptyset(&blocked);
  int blocked_list[] = {SIGUSR1, SIGA, SIGB, SIGINT, SIGQUIT, SIGRTMAX};
  for (size_t i = 0; i < sizeof blocked_list / sizeof blocked_list[0]; i++)
    sigaddset(&blocked, blocked_list[i]);
  SETUP(sigprocmask(SIG_SETMASK, &blocked, NULL) == 0, "sigprocmask");
  uint64_t blocked_bits = mask_bits(&blocked);

  /* Pending: standard signal (shared queue), two RT instances with values
   * (shared queue), one RT with a value on the thread's own queue. */
  SETUP(kill(pid, SIGUSR1) == 0, "kill");
  SETUP(sigqueue(pid, SIGA, (union sigval){.sival_int = 201}) == 0, "sigqueue 201");
  SETUP(sigqueue(pid, SIGA, (union sigval){.sival_int = 202}) == 0, "sigqueue 202");
  siginfo_t si;
  memset(&si, 0, sizeof si);
  si.si_signo = SIGB;
  si.si_code = SI_QUEUE;
  si.si_pid = pid;
  si.si_uid = getuid();
  si.si_value.sival_int = 401;
  SETUP(syscall(SYS_rt_tgsigqueueinfo, pid, gettid(), SIGB, &si) == 0, "rt_tgsigqueueinfo");

  for (int sig = 1; sig <= 64; sig++)
    if (!skip(sig))
      SETUP(sigaction(sig, NULL, &before[sig]) == 0, "sigaction(%d, NULL)", sig);
  SETUP(read_text("/proc/self/status", txt, sizeof txt) > 0, "read status");
  SETUP(status_hex(txt, "SigPnd") == bit(SIGB), "SigPnd before dump: %s", status_field(txt, "SigPnd"));
  SETUP(status_hex(txt, "ShdPnd") == (bit(SIGUSR1) | bit(SIGA)), "ShdPnd before dump");

  READY();
  wait_for_trigger();

  /* Dispositions. */
  for (int sig = 1; sig <= 64; sig++) {
    if (skip(sig))
      continue;
    struct sigaction now;
    if (sigaction(sig, NULL, &now) != 0) {
      CHECK(0, "sigaction(%d, NULL): %s", sig, strerror(errno));
      continue;
    }
    CHECK(now.sa_handler == before[sig].sa_handler, "signal %d: handler %p, expected %p", sig,
          (void *)now.sa_handler, (void *)before[sig].sa_handler);
    CHECK(now.sa_flags == before[sig].sa_flags, "signal %d: sa_flags %#x, expected %#x", sig, now.sa_flags,
          before[sig].sa_flags);
    uint64_t m = mask_bits(&now.sa_mask), mb = mask_bits(&before[sig].sa_mask);
    CHECK(m == mb, "signal %d: sa_mask %#llx, expected %#llx", sig, (unsigned long long)m, (unsigned long long)mb);
  }
  /* ...and they are the ones we installed (so 'before' was not already bad). */
  for (size_t i = 0; i < sizeof disps / sizeof disps[0]; i++) {
    const struct disp *d = &disps[i];
    struct sigaction now;
    sigaction(d->sig, NULL, &now);
    uint64_t want = 0;
    for (int j = 0; d->mask[j]; j++)
      want |= bit(d->mask[j]);
    CHECK((void *)now.sa_handler == d->handler, "signal %d: handler %p, installed %p", d->sig, (void *)now.sa_handler,
          d->handler);
    CHECK((now.sa_flags & d->flags) == d->flags, "signal %d: sa_flags %#x lack installed %#x", d->sig, now.sa_flags,
          d->flags);
    CHECK(mask_bits(&now.sa_mask) == want, "signal %d: sa_mask %#llx, installed %#llx", d->sig,
          (unsigned long long)mask_bits(&now.sa_mask), (unsigned long long)want);
  }

  /* Mask and pending sets. */
  sigset_t cur;
  sigprocmask(SIG_BLOCK, NULL, &cur);
  CHECK(mask_bits(&cur) == blocked_bits, "blocked mask %#llx, expected %#llx", (unsigned long long)mask_bits(&cur),
        (unsigned long long)blocked_bits);
  sigset_t pend;
  sigpending(&pend);
  uint64_t want_pend = bit(SIGUSR1) | bit(SIGA) | bit(SIGB);
  CHECK(mask_bits(&pend) == want_pend, "sigpending %#llx, expected %#llx", (unsigned long long)mask_bits(&pend),
        (unsigned long long)want_pend);
  if (read_text("/proc/self/status", txt, sizeof txt) > 0) {
    CHECK(status_hex(txt, "SigPnd") == bit(SIGB), "thread pending (SigPnd) %#llx, expected %#llx",
          (unsigned long long)status_hex(txt, "SigPnd"), (unsigned long long)bit(SIGB));
    CHECK(status_hex(txt, "ShdPnd") == (bit(SIGUSR1) | bit(SIGA)), "process pending (ShdPnd) %#llx, expected %#llx",
          (unsigned long long)status_hex(txt, "ShdPnd"), (unsigned long long)(bit(SIGUSR1) | bit(SIGA)));
  } else {
    CHECK(0, "read /proc/self/status: %s", strerror(errno));
  }

  /* Alternate stack. */
  stack_t now_ss;
  CHECK(sigaltstack(NULL, &now_ss) == 0, "sigaltstack: %s", strerror(errno));
  CHECK(now_ss.ss_sp == altstack && now_ss.ss_size == ALTSTACK_SIZE && now_ss.ss_flags == 0,
        "sigaltstack sp %p size %zu flags %#x, expected %p %d 0", now_ss.ss_sp, now_ss.ss_size, now_ss.ss_flags,
        (void *)altstack, ALTSTACK_SIZE);

  /* Deliver, one signal at a time so the order is well defined. */
  deliver(SIGUSR1, 1);
  struct hit *h = &hits[0];
  if (nhits >= 1) {
    CHECK(h->sig == SIGUSR1 && h->code == SI_USER && h->pid == pid, "SIGUSR1 siginfo: sig %d code %d pid %d", h->sig,
          h->code, (int)h->pid);
    CHECK(h->on_alt && h->ss_onstack, "SA_ONSTACK handler of SIGUSR1 not on the alternate stack (in range %d, "
          "SS_ONSTACK %d)", h->on_alt, h->ss_onstack);
    uint64_t want = blocked_bits | bit(SIGHUP) | bit(SIGUSR1);
    CHECK(h->blocked == want, "mask in SIGUSR1 handler %#llx, expected %#llx", (unsigned long long)h->blocked,
          (unsigned long long)want);
  }
  deliver(SIGA, 2);
  for (int i = 0; i < 2 && 1 + i < nhits; i++) {
    h = &hits[1 + i];
    CHECK(h->sig == SIGA && h->code == SI_QUEUE && h->value == 201 + i && h->pid == pid,
          "SIGRTMIN+2 #%d: sig %d code %d value %d pid %d, expected sig %d SI_QUEUE value %d pid %d", i + 1, h->sig,
          h->code, h->value, (int)h->pid, SIGA, 201 + i, (int)pid);
    CHECK(!h->on_alt, "SIGRTMIN+2 handler ran on the alternate stack without SA_ONSTACK");
  }
  deliver(SIGB, 1);
  if (nhits >= 4) {
    h = &hits[3];
    CHECK(h->sig == SIGB && h->code == SI_QUEUE && h->value == 401 && h->pid == pid,
          "SIGRTMIN+4 (thread queue): sig %d code %d value %d pid %d", h->sig, h->code, h->value, (int)h->pid);
  }
  struct sigaction after_reset;
  sigaction(SIGB, NULL, &after_reset);
  CHECK(after_reset.sa_handler == SIG_DFL, "SA_RESETHAND did not reset SIGRTMIN+4 after delivery");
  sigpending(&pend);
  CHECK(mask_bits(&pend) == 0, "still pending after delivery: %#llx", (unsigned long long)mask_bits(&pend));

  /* Handlers that were not pending still work with their flags. */
  int n0 = nhits;
  raise(SIGTERM);
  CHECK(nhits == n0 + 1, "SIGTERM handler did not run");
  if (nhits == n0 + 1) {
    uint64_t want = blocked_bits & ~(bit(SIGUSR1) | bit(SIGA) | bit(SIGB));
    want |= bit(SIGQUIT) | bit(SIGUSR1); /* its sa_mask; SA_NODEFER: not SIGTERM itself */
    CHECK(hits[n0].blocked == want, "mask in SA_NODEFER SIGTERM handler %#llx, expected %#llx",
          (unsigned long long)hits[n0].blocked, (unsigned long long)want);
  }
  raise(SIGHUP);
  CHECK(nhits == n0 + 2 && hits[n0 + 1].on_alt, "SIGHUP (SA_ONSTACK) handler did not run on the alternate stack");

  return FINISH();
}
