/* unix_external_close: unix sockets whose peers are outside the dumped tree,
 * dumped with --external-unix=close. A helper outside the tree (double-forked
 * away) runs the servers:
 *
 *   fd 10 stream client of the helper's stream.sock; 6 bytes unread
 *   fd 11 seqpacket client of seq.sock; one message unread, and the helper
 *         has not read what fd 11 sent it (its close resets)
 *   fd 12 stream client of an abstract listener the helper keeps
 *   fd 13 stream client still waiting in the backlog of noaccept.sock
 *   fd 14 datagram socket bound to own.sock, connected to dgram.sock
 *   fd 15 unnamed datagram socket connected to dgram.sock (syslog's shape)
 *   fd 16 the tree's listener tree.sock, a helper's client in its backlog
 *
 * After the trigger the helper closes its ends of every connection and
 * re-creates dgram.sock, as if it had gone away and come back; without a
 * dump (selftest) that is what the program sees, and after a restore it
 * must see the same: queued data and EOF (and ECONNRESET once where the
 * peer had unread data or the connection was in a backlog), EPIPE on send,
 * ECONNREFUSED then ENOTCONN on the datagram sockets, which reconnect and
 * work; the accepted client of the backlog reads EOF. Own names, peer names
 * and options are kept, except the abstract peer name, which its live
 * holder keeps (the restored socket's peer is then unnamed).
 */
// Cases (the format is in CMakeLists.txt):
// stasis-selftest: selftest.unix_external_close ${PROGRAM}
// stasis-case: program.unix_external_close ${PROGRAM} --dump-arg=--external-unix=close --inspect
// Left running, the original keeps its live peers (the dump only peeks).
// No cycles case: a reset still unread after one restore is a pending
// SO_ERROR, which a second dump cannot read without taking it.
// stasis-case: program.unix_external_close.leave_running ${PROGRAM} --dump-arg=--external-unix=close --leave-running
// stasis-case: program.unix_external_close.refused ${PROGRAM} --expect-dump-failure [=[(?is)^(?=.*\b{pid}\b)(?=.*outside the dumped tree)(?=.*--external-unix=close)]=]
#include "common.h"

#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

static char dir[80];
static char abstract_name[64];

static socklen_t addr_of(const char* name, int abstract, struct sockaddr_un* sa) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (abstract) {
    size_t n = strlen(name);
    memcpy(sa->sun_path + 1, name, n);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
  }
  snprintf(sa->sun_path, sizeof sa->sun_path, "%s/%s", dir, name);
  return (socklen_t)sizeof *sa;
}

static int bound(int type, const char* name, int abstract) {
  struct sockaddr_un sa;
  socklen_t len = addr_of(name, abstract, &sa);
  if (!abstract) unlink(sa.sun_path);
  int fd = socket(AF_UNIX, type, 0);
  if (fd < 0 || bind(fd, (struct sockaddr*)&sa, len) < 0) return -1;
  if (type != SOCK_DGRAM && listen(fd, 4) < 0) return -1;
  return fd;
}

static int connected(int type, const char* name, int abstract, int at) {
  struct sockaddr_un sa;
  socklen_t len = addr_of(name, abstract, &sa);
  int fd = socket(AF_UNIX, type, 0);
  SETUP(fd >= 0 && connect(fd, (struct sockaddr*)&sa, len) == 0, "connect %s", name);
  if (at >= 0) {
    SETUP(dup2(fd, at) == at, "dup2");
    close(fd);
    fd = at;
  }
  return fd;
}

static int exists(const char* name) {
  char p[300];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  return access(p, F_OK) == 0;
}

static void touch(const char* name) {
  char p[300];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  close(open(p, O_CREAT | O_WRONLY, 0644));
}

/* The helper, outside the tree: the servers, until "done" (or a minute). */
static void helper(int ready) {
  int d = bound(SOCK_DGRAM, "dgram.sock", 0);
  int s = bound(SOCK_STREAM, "stream.sock", 0);
  int q = bound(SOCK_SEQPACKET, "seq.sock", 0);
  int n = bound(SOCK_STREAM, "noaccept.sock", 0);
  int a = bound(SOCK_STREAM, abstract_name, 1);
  if (d < 0 || s < 0 || q < 0 || n < 0 || a < 0) _exit(1);
  if (write(ready, "1", 1) != 1) _exit(1);
  int s1 = accept(s, NULL, NULL), q1 = accept(q, NULL, NULL), a1 = accept(a, NULL, NULL);
  if (s1 < 0 || q1 < 0 || a1 < 0) _exit(1);
  send(s1, "hello", 5, 0);
  send(s1, "unread", 6, 0);
  send(q1, "pkt1", 4, 0);
  send(q1, "pkt2", 4, 0);
  send(a1, "abs", 3, 0);
  int c = connected(SOCK_STREAM, "tree.sock", 0, -1);
  if (write(ready, "2", 1) != 1) _exit(1);
  close(ready);
  for (int i = 0; i < 6000 && !exists("done"); i++) {
    struct pollfd p = {d, POLLIN, 0};
    if (poll(&p, 1, 10) == 1) {
      char buf[64];
      struct sockaddr_un from;
      socklen_t flen = sizeof from;
      ssize_t got = recvfrom(d, buf, sizeof buf, 0, (struct sockaddr*)&from, &flen);
      if (got == 4 && memcmp(buf, "ping", 4) == 0 && flen > offsetof(struct sockaddr_un, sun_path))
        sendto(d, "ack", 3, 0, (struct sockaddr*)&from, flen);
    }
    if (exists("close-now") && !exists("closed")) {
      close(s1);
      close(q1);
      close(a1);
      close(c);
      close(n);
      close(d);
      d = bound(SOCK_DGRAM, "dgram.sock", 0);
      touch("closed");
    }
  }
  _exit(0);
}

static unsigned long long starttime(void) {
  char buf[1024];
  if (read_text("/proc/self/stat", buf, sizeof buf) <= 0) return 0;
  char* p = strrchr(buf, ')');
  unsigned long long v = 0;
  for (int field = 2; p && field < 22; field++) p = strchr(p + 1, ' ');
  if (p) sscanf(p + 1, "%llu", &v);
  return v;
}

static int peer_is(int fd, const char* want, int abstract) {
  struct sockaddr_un sa, exp;
  socklen_t len = sizeof sa;
  memset(&sa, 0, sizeof sa);
  if (getpeername(fd, (struct sockaddr*)&sa, &len) < 0) return 0;
  if (want == NULL) return len == offsetof(struct sockaddr_un, sun_path);
  socklen_t elen = addr_of(want, abstract, &exp);
  if (abstract)
    return len == elen &&
           memcmp(sa.sun_path, exp.sun_path, elen - offsetof(struct sockaddr_un, sun_path)) == 0;
  return strcmp(sa.sun_path, exp.sun_path) == 0;
}

/* recv with a short wait: the bytes, or -errno. */
static long recv_now(int fd, char* buf, size_t n) {
  struct pollfd p = {fd, POLLIN, 0};
  poll(&p, 1, 3000);
  ssize_t got = recv(fd, buf, n, MSG_DONTWAIT);
  return got < 0 ? -errno : got;
}

static long send_now(int fd, const char* s) {
  ssize_t r = send(fd, s, strlen(s), MSG_DONTWAIT | MSG_NOSIGNAL);
  return r < 0 ? -errno : r;
}

/* A connection whose peer is gone: the queued data and EOF; with `reset`,
 * also ECONNRESET once: after the data on a stream (the stream reader
 * looks at the error only once the queue is empty), before it on a
 * seqpacket socket (the datagram reader looks at it first). Sending gives
 * EPIPE. */
static void check_closed(int fd, const char* what, const char* queued, int reset, int seqpacket) {
  char buf[64];
  long got;
  if (reset && seqpacket) {
    got = recv_now(fd, buf, sizeof buf);
    CHECK(got == -ECONNRESET, "%s: expected ECONNRESET first, got %ld", what, got);
  }
  if (queued) {
    got = recv_now(fd, buf, sizeof buf);
    CHECK(got == (long)strlen(queued) && memcmp(buf, queued, got) == 0, "%s: queued data: %ld",
          what, got);
  }
  got = recv_now(fd, buf, sizeof buf);
  if (reset && !seqpacket) {
    CHECK(got == -ECONNRESET, "%s: expected ECONNRESET, got %ld", what, got);
    got = recv_now(fd, buf, sizeof buf);
  }
  CHECK(got == 0, "%s: expected EOF, got %ld", what, got);
  long sent = send_now(fd, "x");
  CHECK(sent == -EPIPE, "%s: send gave %ld, expected -EPIPE", what, sent);
}

int main(void) {
  install_trigger(0);
  const char* tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s", tmp ? tmp : "/tmp");
  snprintf(abstract_name, sizeof abstract_name, "stasis-ext-%d", getpid());
  int l = bound(SOCK_STREAM, "tree.sock", 0);
  SETUP(l >= 0 && dup2(l, 16) == 16, "tree listener");
  close(l);

  int pipefd[2];
  SETUP(pipe(pipefd) == 0, "pipe");
  pid_t x = fork();
  SETUP(x >= 0, "fork");
  if (x == 0) {
    if (fork() == 0) {
      close(pipefd[0]);
      for (int fd = 3; fd < 64; fd++)
        if (fd != pipefd[1]) close(fd);
      helper(pipefd[1]);
    }
    _exit(0);
  }
  SETUP(waitpid(x, NULL, 0) == x, "waitpid");
  close(pipefd[1]);
  char c;
  SETUP(read(pipefd[0], &c, 1) == 1 && c == '1', "helper's servers");
  connected(SOCK_STREAM, "stream.sock", 0, 10);
  connected(SOCK_SEQPACKET, "seq.sock", 0, 11);
  connected(SOCK_STREAM, abstract_name, 1, 12);
  SETUP(read(pipefd[0], &c, 1) == 1 && c == '2', "helper's connections");
  close(pipefd[0]);
  connected(SOCK_STREAM, "noaccept.sock", 0, 13);
  int own = bound(SOCK_DGRAM, "own.sock", 0);
  SETUP(own >= 0 && dup2(own, 14) == 14, "own.sock");
  close(own);
  struct sockaddr_un sa;
  socklen_t len = addr_of("dgram.sock", 0, &sa);
  SETUP(connect(14, (struct sockaddr*)&sa, len) == 0, "connect 14");
  connected(SOCK_DGRAM, "dgram.sock", 0, 15);

  char buf[64];
  SETUP(recv(10, buf, 5, MSG_WAITALL) == 5, "hello");
  SETUP(recv(11, buf, sizeof buf, 0) == 4, "pkt1");
  SETUP(send(11, "to-helper", 9, 0) == 9, "send on 11");
  struct timeval tv = {3, 0};
  SETUP(setsockopt(10, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0, "SO_RCVTIMEO");
  /* Everything the helper sent has arrived. */
  for (int i = 0; i < 200; i++) {
    int a = recv(10, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT),
        b = recv(12, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
    if (a == 6 && b == 3) break;
    usleep(10000);
  }
  unsigned long long born = starttime();

  READY();
  wait_for_trigger();
  int restored = starttime() != born;

  touch("close-now");
  for (int i = 0; i < 500 && !exists("closed"); i++) usleep(10000);
  CHECK(exists("closed"), "the helper did not close its ends");

  check_closed(10, "stream", "unread", 0, 0);
  CHECK(peer_is(10, "stream.sock", 0), "stream: peer name changed");
  struct timeval got_tv = {0, 0};
  socklen_t tvlen = sizeof got_tv;
  getsockopt(10, SOL_SOCKET, SO_RCVTIMEO, &got_tv, &tvlen);
  CHECK(got_tv.tv_sec == 3, "stream: SO_RCVTIMEO %ld", (long)got_tv.tv_sec);
  check_closed(11, "seqpacket", "pkt2", 1, 1);
  CHECK(peer_is(11, "seq.sock", 0), "seqpacket: peer name changed");
  check_closed(12, "abstract", "abs", 0, 0);
  /* Its holder kept the name: the restore's stand-in could not take it. */
  CHECK(restored ? peer_is(12, NULL, 0) : peer_is(12, abstract_name, 1),
        "abstract: peer name (restored %d)", restored);
  check_closed(13, "waiting in a backlog", NULL, 1, 0);
  CHECK(peer_is(13, "noaccept.sock", 0), "backlog client: peer name changed");

  long r = send_now(14, "x");
  CHECK(r == -ECONNREFUSED, "own.sock: first send gave %ld, expected -ECONNREFUSED", r);
  r = send_now(14, "x");
  CHECK(r == -ENOTCONN, "own.sock: second send gave %ld, expected -ENOTCONN", r);
  struct sockaddr_un me;
  socklen_t melen = sizeof me;
  CHECK(getsockname(14, (struct sockaddr*)&me, &melen) == 0 && strstr(me.sun_path, "/own.sock"),
        "own.sock: lost its name");
  len = addr_of("dgram.sock", 0, &sa);
  CHECK(sendto(14, "ping", 4, 0, (struct sockaddr*)&sa, len) == 4, "own.sock: sendto (errno %d)",
        errno);
  r = recv_now(14, buf, sizeof buf);
  CHECK(r == 3 && memcmp(buf, "ack", 3) == 0, "own.sock: no answer from the new server: %ld", r);

  r = send_now(15, "x");
  CHECK(r == -ECONNREFUSED, "unnamed dgram: first send gave %ld", r);
  CHECK(connect(15, (struct sockaddr*)&sa, len) == 0, "unnamed dgram: reconnect (errno %d)", errno);
  CHECK(send_now(15, "ping") == 4, "unnamed dgram: send after reconnect");

  fcntl(16, F_SETFL, O_NONBLOCK);
  int acc = accept4(16, NULL, NULL, SOCK_NONBLOCK);
  CHECK(acc >= 0, "tree listener: no connection in its backlog (errno %d)", errno);
  if (acc >= 0) {
    r = recv_now(acc, buf, sizeof buf);
    CHECK(r == 0, "tree listener: the gone client's connection gave %ld, expected EOF", r);
  }
  CHECK(accept4(16, NULL, NULL, SOCK_NONBLOCK) < 0 && errno == EAGAIN,
        "tree listener: a second connection");
  touch("done");
  return FINISH();
}
