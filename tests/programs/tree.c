/* A process tree three levels deep:
 *
 *   root (session and group leader, as the runner starts it)
 *   ├─ a     own process group;          pipe root->a holds data
 *   │  └─ a1 in a's group;               pipe a->a1 holds data
 *   │     └─ a2 in a's group
 *   ├─ s     setsid(): a second session
 *   │  └─ s1 in s's session and group
 *   ├─ m     in the group of l, whose leader l has exited and been reaped
 *   └─ z     a zombie that exited with status 7
 *
 * root and a share one open file description (shared offset).
 * After the trigger (SIGUSR2 to root), root signals its live children; each
 * process checks its own pid, ppid, pgid, sid and pipe data, tells its own
 * children to check, collects their exit statuses and exits 0 or 1. root
 * also checks the zombie's status and the shared offset.
 */
// Cases (the format is in CMakeLists.txt):
// A fork tree: three levels, pipes between them, two sessions, a group whose
// leader exited, a zombie, an open file shared by two processes.
// stasis-case: program.tree ${PROGRAM}
// stasis-case: program.tree.cycles3 ${PROGRAM} --cycles 3
// stasis-case: program.tree.nobody ${PROGRAM} --user nobody
#include "common.h"

#include <sys/wait.h>

static pid_t root_pid, l_pid;
static int file_fd;

struct expect {
  pid_t ppid, pgid, sid;
};

static void signal_children(pid_t *kids, int n) {
  for (int i = 0; i < n; i++) kill(kids[i], SIGUSR2);
}

/* Waits for each child and fails unless it exited 0. */
static void collect(pid_t *kids, const char **names, int n) {
  for (int i = 0; i < n; i++) {
    int st;
    pid_t r = waitpid(kids[i], &st, 0);
    CHECK(r == kids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %s (pid %d) failed: status %#x",
          names[i], kids[i], r == kids[i] ? st : -1);
  }
}

static void check_ids(const char *who, struct expect e) {
  CHECK(getppid() == e.ppid, "%s: getppid %d, expected %d", who, getppid(), e.ppid);
  CHECK(getpgrp() == e.pgid, "%s: getpgrp %d, expected %d", who, getpgrp(), e.pgid);
  CHECK(getsid(0) == e.sid, "%s: getsid %d, expected %d", who, getsid(0), e.sid);
}

static void check_pipe(const char *who, int fd, const char *want) {
  char buf[64] = {0};
  ssize_t n = read(fd, buf, sizeof buf - 1);
  CHECK(n == (ssize_t)strlen(want) && strcmp(buf, want) == 0, "%s: pipe holds '%s', expected '%s'", who, buf, want);
}

/* Leaf: wait for the trigger, check, exit. */
static void leaf(const char *who, struct expect e) {
  wait_for_trigger();
  check_ids(who, e);
  exit(check_line_ ? 1 : 0);
}

static pid_t spawn_a2(pid_t a_pgid, pid_t sid) {
  pid_t parent = getpid();
  pid_t p = fork();
  if (p == 0) leaf("a2", (struct expect){parent, a_pgid, sid});
  return p;
}

static pid_t spawn_a1(int from_a, pid_t a_pgid, pid_t sid) {
  pid_t parent = getpid();
  pid_t p = fork();
  if (p != 0) return p;
  pid_t kid = spawn_a2(a_pgid, sid);
  wait_for_trigger();
  check_ids("a1", (struct expect){parent, a_pgid, sid});
  check_pipe("a1", from_a, "a-to-a1");
  signal_children(&kid, 1);
  collect(&kid, (const char *[]){"a2"}, 1);
  exit(check_line_ ? 1 : 0);
}

static pid_t spawn_a(int from_root) {
  pid_t p = fork();
  if (p != 0) return p;
  setpgid(0, 0);
  int to_a1[2];
  SETUP(pipe(to_a1) == 0, "pipe");
  pid_t kid = spawn_a1(to_a1[0], getpid(), root_pid);
  SETUP(write(to_a1[1], "a-to-a1", 7) == 7, "write");
  wait_for_trigger();
  check_ids("a", (struct expect){root_pid, getpid(), root_pid});
  check_pipe("a", from_root, "root-to-a");
  /* The shared description: root moved the offset to 100 after the fork. */
  CHECK(lseek(file_fd, 0, SEEK_CUR) == 100, "a: shared offset is %ld, expected 100", (long)lseek(file_fd, 0, SEEK_CUR));
  lseek(file_fd, 200, SEEK_SET); /* root checks it sees this */
  signal_children(&kid, 1);
  collect(&kid, (const char *[]){"a1"}, 1);
  exit(check_line_ ? 1 : 0);
}

static pid_t spawn_s(void) {
  pid_t p = fork();
  if (p != 0) return p;
  SETUP(setsid() == getpid(), "setsid");
  pid_t me = getpid();
  pid_t kid = fork();
  if (kid == 0) leaf("s1", (struct expect){me, me, me});
  wait_for_trigger();
  check_ids("s", (struct expect){root_pid, me, me});
  signal_children(&kid, 1);
  collect(&kid, (const char *[]){"s1"}, 1);
  exit(check_line_ ? 1 : 0);
}

int main(void) {
  install_trigger(0);
  root_pid = getpid();
  SETUP(getsid(0) == root_pid && getpgrp() == root_pid, "start me as a session leader (setsid)");
  char path[4096];
  snprintf(path, sizeof path, "%s/tree-shared.dat", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  file_fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  SETUP(file_fd >= 0, "open %s", path);
  SETUP(ftruncate(file_fd, 4096) == 0, "ftruncate");
  int to_a[2];
  SETUP(pipe(to_a) == 0, "pipe");

  pid_t a = spawn_a(to_a[0]);
  SETUP(write(to_a[1], "root-to-a", 9) == 9, "write");
  lseek(file_fd, 100, SEEK_SET);
  pid_t s = spawn_s();
  /* l leads a group and exits; m stays in that group. */
  int sync_pipe[2];
  SETUP(pipe(sync_pipe) == 0, "pipe");
  l_pid = fork();
  if (l_pid == 0) {
    setpgid(0, 0);
    char c;
    SETUP(read(sync_pipe[0], &c, 1) == 1, "read");
    _exit(0);
  }
  setpgid(l_pid, l_pid); /* no race on who sets it first */
  pid_t m = fork();
  if (m == 0) leaf("m", (struct expect){root_pid, l_pid, root_pid});
  SETUP(setpgid(m, l_pid) == 0, "setpgid m");
  SETUP(write(sync_pipe[1], "x", 1) == 1, "write");
  SETUP(waitpid(l_pid, NULL, 0) == l_pid, "reap l");
  pid_t z = fork();
  if (z == 0) _exit(7);
  /* Let z die and everyone reach its wait. */
  for (int i = 0; i < 200; i++) {
    char st[512];
    snprintf(path, sizeof path, "/proc/%d/stat", z);
    if (read_text(path, st, sizeof st) > 0 && strstr(st, ") Z ")) break;
    usleep(10000);
  }
  usleep(200000);
  READY();
  wait_for_trigger();

  check_ids("root", (struct expect){getppid(), root_pid, root_pid});
  CHECK(getpgid(a) == a && getsid(a) == root_pid, "a: pgid %d sid %d", getpgid(a), getsid(a));
  CHECK(getpgid(s) == s && getsid(s) == s, "s: pgid %d sid %d", getpgid(s), getsid(s));
  CHECK(getpgid(m) == l_pid, "m: pgid %d, expected the exited leader's %d", getpgid(m), l_pid);
  CHECK(kill(l_pid, 0) < 0 && errno == ESRCH, "l came back to life");
  pid_t kids[] = {a, s, m};
  signal_children(kids, 3);
  collect(kids, (const char *[]){"a", "s", "m"}, 3);
  CHECK(lseek(file_fd, 0, SEEK_CUR) == 200, "root: shared offset is %ld, expected a's 200", (long)lseek(file_fd, 0, SEEK_CUR));
  int st;
  CHECK(waitpid(z, &st, WNOHANG) == z && WIFEXITED(st) && WEXITSTATUS(st) == 7, "zombie z lost its status");
  return FINISH();
}
