/* unix_backlog: data sent on unix connections still waiting in a listener's
 * backlog (only accept() reaches it: the dump reads it at its point of no
 * return and the restore sends it again before the program runs).
 *
 * Two listeners, a stream one on $TMPDIR/b.sock and a seqpacket one on an
 * abstract name, each with four connections waiting, in this order:
 *   0: nothing sent;
 *   1: stream: "hello" then 150 KB of pattern; seqpacket: messages "one",
 *      "" (empty), 5000 bytes of pattern, "last" (boundaries must stay);
 *   2: data with explicit SCM_CREDENTIALS, then shutdown(SHUT_WR);
 *   3: nothing sent, held by a child process (the client end is in another
 *      process of the tree); the child then sends once triggered.
 * No client has received anything yet.
 *
 * After restore: accept() returns the connections in the same order, with
 * the same data byte for byte and the same message boundaries, the
 * credentials' uid and gid, EOF after the shut-down one's data, no data on
 * the empty ones; clients still have nothing to read; then replies flow
 * both ways on every connection.
 *
 * With the argument "fds", the stream client 1 passes an fd (SCM_RIGHTS)
 * with its "hello": fds in flight are not carried, so the dump must refuse
 * before taking anything (the listener's fdinfo counts them); the program
 * then checks the same things without a restore.
 */
// Cases (the format is in CMakeLists.txt):
// Stream and seqpacket listeners with four waiting connections each: data,
// message boundaries, credentials, a shut-down client, one from a child.
// stasis-case: program.unix_backlog ${PROGRAM} --inspect
// stasis-case: program.unix_backlog.cycles3 ${PROGRAM} --cycles 3
// An fd passed on a waiting connection: refused before anything is taken.
// stasis-case: program.unix_backlog_fds ${PROGRAM} fds --expect-dump-failure [=[(?is)^(?=.*\b{pid}\b)(?=.*b\.sock)(?=.*in flight \(SCM_RIGHTS\))(?=.*waiting in its backlog)]=]
// stasis-selftest: selftest.unix_backlog ${PROGRAM}
#include "common.h"

#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#define NCONN 4
#define STREAM_BIG (150 * 1024)
#define SEQ_BIG 5000

struct listener {
  int type;
  int fd;
  struct sockaddr_un addr;
  socklen_t addr_len;
  int clients[NCONN]; /* -1 for the one the child holds */
};

/* sendmsg with one control message of `type` (SCM_CREDENTIALS, SCM_RIGHTS). */
static ssize_t send_control(int fd, const void *data, size_t len, int type, const void *payload,
                            size_t payload_len) {
  char control[CMSG_SPACE(sizeof(struct ucred))]; /* the larger of the two payloads */
  memset(control, 0, sizeof control);
  struct iovec iov = {(void *)data, len};
  struct msghdr m = {0};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = CMSG_SPACE(payload_len);
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = type;
  c->cmsg_len = CMSG_LEN(payload_len);
  memcpy(CMSG_DATA(c), payload, payload_len);
  return sendmsg(fd, &m, 0);
}

static ssize_t send_creds(int fd, const void *data, size_t len) {
  struct ucred cred = {getpid(), getuid(), getgid()};
  return send_control(fd, data, len, SCM_CREDENTIALS, &cred, sizeof cred);
}

static int pass_fd;

static ssize_t send_with_fd(int fd, const void *data, size_t len, int passed) {
  return send_control(fd, data, len, SCM_RIGHTS, &passed, sizeof passed);
}

static int connect_to(const struct listener *l) {
  int fd = socket(AF_UNIX, l->type, 0);
  SETUP(fd >= 0 && connect(fd, (const struct sockaddr *)&l->addr, l->addr_len) == 0, "connect");
  return fd;
}

static void send_all(int fd, const void *data, size_t len) {
  SETUP(send(fd, data, len, 0) == (ssize_t)len, "send %zu bytes", len);
}

static void fill_backlog(struct listener *l, int child_sock) {
  static uint8_t big[STREAM_BIG];
  l->clients[0] = connect_to(l);
  l->clients[1] = connect_to(l);
  if (l->type == SOCK_STREAM) {
    fill(big, STREAM_BIG, 11);
    if (pass_fd)
      SETUP(send_with_fd(l->clients[1], "hello", 5, 0) == 5, "send with SCM_RIGHTS");
    else
      send_all(l->clients[1], "hello", 5);
    send_all(l->clients[1], big, STREAM_BIG);
  } else {
    fill(big, SEQ_BIG, 12);
    send_all(l->clients[1], "one", 3);
    send_all(l->clients[1], "", 0);
    send_all(l->clients[1], big, SEQ_BIG);
    send_all(l->clients[1], "last", 4);
  }
  l->clients[2] = connect_to(l);
  SETUP(send_creds(l->clients[2], "with creds", 10) == 10, "send with SCM_CREDENTIALS");
  SETUP(shutdown(l->clients[2], SHUT_WR) == 0, "shutdown");
  /* Connection 3 comes from the child, after these. */
  char c = l->type == SOCK_STREAM ? 's' : 'q';
  SETUP(write(child_sock, &c, 1) == 1, "ask the child to connect");
  SETUP(read(child_sock, &c, 1) == 1, "the child connected");
  l->clients[3] = -1;
}

static void nothing_to_read(int fd, const char *what) {
  char b;
  ssize_t n = recv(fd, &b, 1, MSG_DONTWAIT);
  CHECK(n < 0 && errno == EAGAIN, "%s: expected nothing to read, got %zd (%s)", what, n, n < 0 ? strerror(errno) : "data");
}

static void expect_bytes(int fd, const void *want, size_t len, const char *what) {
  static uint8_t buf[STREAM_BIG + 64];
  ssize_t n = recv(fd, buf, len, MSG_WAITALL);
  CHECK(n == (ssize_t)len && memcmp(buf, want, len) == 0, "%s: got %zd of %zu bytes (or different ones)", what, n, len);
}

/* One seqpacket message, whole: its length is the boundary. */
static void expect_message(int fd, const void *want, size_t len, const char *what) {
  static uint8_t buf[SEQ_BIG + 64];
  ssize_t n = recv(fd, buf, sizeof buf, 0);
  CHECK(n == (ssize_t)len && memcmp(buf, want, len) == 0, "%s: message of %zd bytes, want %zu", what, n, len);
}

static void expect_creds(int fd, const char *what) {
  int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
  char buf[32];
  char control[CMSG_SPACE(sizeof(struct ucred))];
  struct iovec iov = {buf, 10};
  struct msghdr m = {0};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  ssize_t n = recvmsg(fd, &m, MSG_WAITALL);
  CHECK(n == 10 && memcmp(buf, "with creds", 10) == 0, "%s: got %zd bytes", what, n);
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  CHECK(c != NULL && c->cmsg_type == SCM_CREDENTIALS, "%s: no SCM_CREDENTIALS", what);
  if (c != NULL && c->cmsg_type == SCM_CREDENTIALS) {
    struct ucred cred;
    memcpy(&cred, CMSG_DATA(c), sizeof cred);
    CHECK(cred.uid == getuid() && cred.gid == getgid(), "%s: credentials uid %u gid %u", what, cred.uid, cred.gid);
  }
  n = recv(fd, buf, 1, 0);
  CHECK(n == 0, "%s: expected EOF after the data (the client shut down), got %zd", what, n);
}

static void check_listener(struct listener *l, int child_sock) {
  const char *kind = l->type == SOCK_STREAM ? "stream" : "seqpacket";
  char what[64];
  static uint8_t big[STREAM_BIG];
  for (int i = 0; i < NCONN; i++) {
    if (l->clients[i] >= 0) {
      snprintf(what, sizeof what, "%s client %d", kind, i);
      nothing_to_read(l->clients[i], what);
    }
  }
  int conns[NCONN];
  for (int i = 0; i < NCONN; i++) {
    conns[i] = accept(l->fd, NULL, NULL);
    CHECK(conns[i] >= 0, "%s: accept %d: %s", kind, i, strerror(errno));
    if (conns[i] < 0)
      return;
    struct timeval tv = {5, 0};
    setsockopt(conns[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  snprintf(what, sizeof what, "%s connection 0", kind);
  nothing_to_read(conns[0], what);
  snprintf(what, sizeof what, "%s connection 1", kind);
  if (l->type == SOCK_STREAM) {
    fill(big, STREAM_BIG, 11);
    expect_bytes(conns[1], "hello", 5, what);
    expect_bytes(conns[1], big, STREAM_BIG, what);
  } else {
    fill(big, SEQ_BIG, 12);
    expect_message(conns[1], "one", 3, what);
    expect_message(conns[1], "", 0, what);
    expect_message(conns[1], big, SEQ_BIG, what);
    expect_message(conns[1], "last", 4, what);
  }
  nothing_to_read(conns[1], what);
  snprintf(what, sizeof what, "%s connection 2", kind);
  expect_creds(conns[2], what);
  snprintf(what, sizeof what, "%s connection 3", kind);
  nothing_to_read(conns[3], what);
  /* Both ways, on every connection (the child's below). */
  for (int i = 0; i < NCONN; i++) {
    if (l->clients[i] < 0)
      continue;
    snprintf(what, sizeof what, "%s reply on connection %d", kind, i);
    CHECK(send(conns[i], "pong", 4, 0) == 4, "%s: send", what);
    expect_bytes(l->clients[i], "pong", 4, what);
    if (i != 2) {
      CHECK(send(l->clients[i], "ping", 4, 0) == 4, "%s: client send", what);
      expect_bytes(conns[i], "ping", 4, what);
    }
  }
  char c = l->type == SOCK_STREAM ? 's' : 'q';
  SETUP(write(child_sock, &c, 1) == 1, "wake the child");
  expect_bytes(conns[3], "from child", 10, "child's connection after restore");
  CHECK(send(conns[3], "bye", 3, 0) == 3, "send to the child");
}

/* Connects to the listener of type 's' or 'q' when asked; after the
 * trigger, sends on each and reads the reply. */
static void child(int sock, struct listener *ls) {
  int fds[2];
  for (int k = 0; k < 2; k++) {
    char c;
    if (read(sock, &c, 1) != 1)
      _exit(10);
    struct listener *l = c == 's' ? &ls[0] : &ls[1];
    fds[k] = socket(AF_UNIX, l->type, 0);
    if (fds[k] < 0 || connect(fds[k], (struct sockaddr *)&l->addr, l->addr_len) != 0)
      _exit(11);
    if (write(sock, &c, 1) != 1)
      _exit(12);
  }
  for (int k = 0; k < 2; k++) {
    char c, buf[8];
    if (read(sock, &c, 1) != 1)
      _exit(13);
    if (send(fds[k], "from child", 10, 0) != 10)
      _exit(14);
    if (recv(fds[k], buf, 3, MSG_WAITALL) != 3 || memcmp(buf, "bye", 3) != 0)
      _exit(15);
  }
  _exit(0);
}

int main(int argc, char **argv) {
  pass_fd = argc > 1 && strcmp(argv[1], "fds") == 0;
  install_trigger(SA_RESTART);
  const char *dir = getenv("TMPDIR");
  struct listener ls[2];
  memset(ls, 0, sizeof ls);
  ls[0].type = SOCK_STREAM;
  ls[0].addr.sun_family = AF_UNIX;
  snprintf(ls[0].addr.sun_path, sizeof ls[0].addr.sun_path, "%s/b.sock", dir && *dir ? dir : ".");
  ls[0].addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(ls[0].addr.sun_path) + 1);
  unlink(ls[0].addr.sun_path);
  ls[1].type = SOCK_SEQPACKET;
  ls[1].addr.sun_family = AF_UNIX;
  int len = snprintf(ls[1].addr.sun_path + 1, sizeof ls[1].addr.sun_path - 1, "stasis-unix-backlog-%d", getpid());
  ls[1].addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
  for (int i = 0; i < 2; i++) {
    ls[i].fd = socket(AF_UNIX, ls[i].type, 0);
    SETUP(ls[i].fd >= 0 && bind(ls[i].fd, (struct sockaddr *)&ls[i].addr, ls[i].addr_len) == 0, "bind");
    SETUP(listen(ls[i].fd, 8) == 0, "listen");
  }
  int sv[2];
  SETUP(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
  pid_t pid = fork();
  SETUP(pid >= 0, "fork");
  if (pid == 0) {
    close(sv[0]);
    child(sv[1], ls);
  }
  close(sv[1]);
  for (int i = 0; i < 2; i++)
    fill_backlog(&ls[i], sv[0]);

  READY();
  wait_for_trigger();

  for (int i = 0; i < 2; i++)
    check_listener(&ls[i], sv[0]);
  int status;
  CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed: status %#x", status);
  unlink(ls[0].addr.sun_path);
  return FINISH();
}
