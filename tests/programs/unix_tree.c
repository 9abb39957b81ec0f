/* unix_tree: named AF_UNIX sockets across two processes.
 *
 * The parent binds a stream listener to $TMPDIR/l.sock (mode 0640, backlog
 * 5) and a datagram socket to an abstract name. The child connects to the
 * listener (the parent accepts it; data is queued both ways), opens a
 * second connection that stays in the listener's backlog, and exchanges
 * datagrams from its own abstract name (one queued each way).
 *
 * After restore: the parent accepts the waiting connection and reads what
 * the child sends on it now; the queued data and datagrams arrive with
 * their sender's name; every name (getsockname/getpeername) is the same,
 * the socket file keeps its mode; everything still talks.
 *
 * With the argument "backlog-data" the child also sends on the waiting
 * connection before the dump: only accept() reads that data, so the dump
 * reads it at its point of no return and the restore sends it again; after
 * restore the parent reads it first. With --leave-running the dump must
 * refuse (accept() would take the connection); the program then checks the
 * same things without a restore.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-case: program.unix_tree ${PROGRAM}
// stasis-case: program.unix_tree.cycles3 ${PROGRAM} --cycles 3
// stasis-case: program.unix_tree.nobody ${PROGRAM} --user nobody
// Data sent on a connection still waiting in the backlog: read with accept()
// at the dump's point of no return (unix_socket_pending.cc).
// stasis-case: program.unix_backlog_data ${PROGRAM} backlog-data
// ... which --leave-running cannot do without taking the connection.
// stasis-case: program.unix_backlog_data.leave_running ${PROGRAM} backlog-data --leave-running --expect-dump-failure [=[(?is)^(?=.*\b{pid}\b)(?=.*l\.sock)(?=.*waiting in its backlog)(?=.*accept\(\))(?=.*--leave-running)]=]
// stasis-selftest: selftest.unix_tree ${PROGRAM}
// stasis-selftest: selftest.unix_backlog_data ${PROGRAM} backlog-data
#include "common.h"

#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

static char listen_path[200];
static char parent_dgram[64], child_dgram[64];
static socklen_t parent_dgram_len, child_dgram_len;

static socklen_t path_addr(struct sockaddr_un *sa, const char *path) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  strcpy(sa->sun_path, path);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
}

static socklen_t abstract_addr(struct sockaddr_un *sa, const char *name, size_t len) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  memcpy(sa->sun_path, name, len);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
}

static int same_name(int fd, int peer, const struct sockaddr_un *want, socklen_t want_len) {
  struct sockaddr_un got;
  socklen_t len = sizeof got;
  int r = peer ? getpeername(fd, (struct sockaddr *)&got, &len) : getsockname(fd, (struct sockaddr *)&got, &len);
  return r == 0 && len == want_len && memcmp(&got, want, len) == 0;
}

/* Reads exactly strlen(want) bytes (a timeout turns a loss into a failure). */
static void expect_text(int fd, const char *want, const char *what) {
  char buf[256];
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ssize_t n = recv(fd, buf, strlen(want), MSG_WAITALL);
  CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, (size_t)n) == 0, "%s: got %zd bytes '%.*s', want '%s' (%s)",
        what, n, n > 0 ? (int)n : 0, buf, want, n < 0 ? strerror(errno) : "");
}

/* The child: exits 0, or with the line of its first failed check. */
#define CHILD_CHECK(cond)  \
  do {                     \
    if (!(cond))           \
      _exit(__LINE__ & 0xff ? __LINE__ & 0xff : 1); \
  } while (0)

static void child(int go_fd, int ready_fd, int backlog_data) {
  struct sockaddr_un l, pd, cd;
  socklen_t llen = path_addr(&l, listen_path);
  socklen_t pdlen = abstract_addr(&pd, parent_dgram, parent_dgram_len);
  socklen_t cdlen = abstract_addr(&cd, child_dgram, child_dgram_len);
  int conn = socket(AF_UNIX, SOCK_STREAM, 0);
  CHILD_CHECK(conn >= 0 && connect(conn, (struct sockaddr *)&l, llen) == 0);
  CHILD_CHECK(send(conn, "child to parent", 15, 0) == 15);
  int waiting = socket(AF_UNIX, SOCK_STREAM, 0);
  CHILD_CHECK(waiting >= 0 && connect(waiting, (struct sockaddr *)&l, llen) == 0);
  if (backlog_data)
    CHILD_CHECK(send(waiting, "early", 5, 0) == 5);
  int d = socket(AF_UNIX, SOCK_DGRAM, 0);
  CHILD_CHECK(d >= 0 && bind(d, (struct sockaddr *)&cd, cdlen) == 0);
  CHILD_CHECK(connect(d, (struct sockaddr *)&pd, pdlen) == 0);
  CHILD_CHECK(send(d, "dgram from child", 16, 0) == 16);
  CHILD_CHECK(write(ready_fd, "r", 1) == 1);

  char c;
  while (read(go_fd, &c, 1) != 1) {
  }
  char buf[64];
  CHILD_CHECK(recv(conn, buf, sizeof buf, 0) == 15 && memcmp(buf, "parent to child", 15) == 0);
  CHILD_CHECK(same_name(conn, 1, &l, llen));
  CHILD_CHECK(same_name(d, 0, &cd, cdlen) && same_name(d, 1, &pd, pdlen));
  struct sockaddr_un from;
  socklen_t flen = sizeof from;
  CHILD_CHECK(recvfrom(d, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen) == 17 &&
              memcmp(buf, "dgram from parent", 17) == 0);
  CHILD_CHECK(flen == pdlen && memcmp(&from, &pd, flen) == 0);
  CHILD_CHECK(send(waiting, "late", 4, 0) == 4);
  CHILD_CHECK(send(conn, "again", 5, 0) == 5);
  CHILD_CHECK(send(d, "dgram again", 11, 0) == 11);
  CHILD_CHECK(recv(conn, buf, sizeof buf, 0) == 4 && memcmp(buf, "done", 4) == 0);
  _exit(0);
}

int main(int argc, char **argv) {
  int backlog_data = argc > 1 && strcmp(argv[1], "backlog-data") == 0;
  install_trigger(SA_RESTART);
  const char *dir = getenv("TMPDIR");
  snprintf(listen_path, sizeof listen_path, "%s/l.sock", dir && *dir ? dir : ".");
  parent_dgram_len = (socklen_t)(1 + snprintf(parent_dgram + 1, sizeof parent_dgram - 1, "stasis-unix-tree-%d-p", getpid()));
  child_dgram_len = (socklen_t)(1 + snprintf(child_dgram + 1, sizeof child_dgram - 1, "stasis-unix-tree-%d-c", getpid()));

  struct sockaddr_un l, pd, cd;
  socklen_t llen = path_addr(&l, listen_path);
  socklen_t pdlen = abstract_addr(&pd, parent_dgram, parent_dgram_len);
  socklen_t cdlen = abstract_addr(&cd, child_dgram, child_dgram_len);
  unlink(listen_path);
  int listener = socket(AF_UNIX, SOCK_STREAM, 0);
  SETUP(listener >= 0 && bind(listener, (struct sockaddr *)&l, llen) == 0, "bind %s", listen_path);
  SETUP(chmod(listen_path, 0640) == 0, "chmod");
  SETUP(listen(listener, 5) == 0, "listen");
  int d = socket(AF_UNIX, SOCK_DGRAM, 0);
  SETUP(d >= 0 && bind(d, (struct sockaddr *)&pd, pdlen) == 0, "bind abstract");

  int go[2], ready[2];
  SETUP(pipe(go) == 0 && pipe(ready) == 0, "pipe");
  pid_t pid = fork();
  SETUP(pid >= 0, "fork");
  if (pid == 0) {
    close(go[1]);
    close(ready[0]);
    child(go[0], ready[1], backlog_data);
  }
  close(go[0]);
  close(ready[1]);
  char c;
  SETUP(read(ready[0], &c, 1) == 1, "the child did not get ready");
  int conn = accept(listener, NULL, NULL);
  SETUP(conn >= 0, "accept");
  SETUP(send(conn, "parent to child", 15, 0) == 15, "send");
  SETUP(sendto(d, "dgram from parent", 17, 0, (struct sockaddr *)&cd, cdlen) == 17, "sendto child");

  READY();
  wait_for_trigger();

  char buf[64];
  CHECK(same_name(listener, 0, &l, llen), "listener name changed");
  CHECK(same_name(conn, 0, &l, llen), "accepted socket's name (its listener's) changed");
  CHECK(same_name(d, 0, &pd, pdlen), "datagram socket's abstract name changed");
  struct stat st;
  CHECK(stat(listen_path, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 07777) == 0640,
        "socket file %s: mode %o", listen_path, (unsigned)st.st_mode);
  expect_text(conn, "child to parent", "accepted connection");
  struct sockaddr_un from;
  socklen_t flen = sizeof from;
  struct timeval tv = {5, 0};
  setsockopt(d, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ssize_t n = recvfrom(d, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &flen);
  CHECK(n == 16 && memcmp(buf, "dgram from child", 16) == 0, "queued datagram: %zd", n);
  CHECK(flen == cdlen && memcmp(&from, &cd, flen) == 0, "queued datagram: sender name changed");

  SETUP(write(go[1], "g", 1) == 1, "wake the child");
  int late = accept(listener, NULL, NULL);
  CHECK(late >= 0, "accept the waiting connection: %s", strerror(errno));
  if (late >= 0) {
    CHECK(same_name(late, 0, &l, llen), "name of the connection accepted after restore");
    if (backlog_data)
      expect_text(late, "early", "data sent while waiting in the backlog");
    expect_text(late, "late", "waiting connection");
  }
  expect_text(conn, "again", "accepted connection after restore");
  n = recv(d, buf, sizeof buf, 0);
  CHECK(n == 11 && memcmp(buf, "dgram again", 11) == 0, "datagram after restore: %zd", n);
  CHECK(send(conn, "done", 4, 0) == 4, "send done");
  int status;
  CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed: status %#x (exit = line %% 256)", status);
  unlink(listen_path);
  return FINISH();
}
