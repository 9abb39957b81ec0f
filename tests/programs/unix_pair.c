/* unix_pair: socketpairs of the three AF_UNIX types in one process, with
 * data queued both ways.
 *
 *   stream:    "hello " + "world" queued to b (b has SO_PASSCRED: the
 *              credentials come with them), "back" queued to a; a is
 *              O_NONBLOCK (an asyncio self-pipe), a SO_RCVLOWAT.
 *   dgram:     messages of 0, 1, 700 and 60000 bytes to b, two to a; b has
 *              SO_PASSCRED, so it autobound an abstract name when it sent.
 *   seqpacket: messages to b and to a; SO_RCVTIMEO, SO_SNDBUF, SO_PEEK_OFF.
 *   half:      a stream pair whose end x sent "bye" and shut down writing.
 *
 * After restore: every message with its boundaries, the credentials' uid
 * and gid, names, options and flags, the half-closed state, and every pair
 * still talks both ways.
 */
// Cases (the format is in CMakeLists.txt):
// AF_UNIX sockets (src/kinds/unix_socket*.cc): socketpairs of the three types
// with queued data, credentials, options and a half-closed pair; a path
// listener with an accepted connection, one waiting in its backlog and an
// abstract datagram exchange across two processes.
// stasis-case: program.unix_pair ${PROGRAM} --inspect
// stasis-case: program.unix_pair.cycles3 ${PROGRAM} --cycles 3
// The peeked queues and the options the dump borrows are back in the original.
// stasis-case: program.unix_pair.leave_running ${PROGRAM} --leave-running
// stasis-selftest: selftest.unix_pair ${PROGRAM}
#include "common.h"

#include <sys/socket.h>
#include <sys/un.h>

struct pair {
  int a, b;
  int type;
};

static struct pair stream_p, dgram_p, seq_p, half_p;
static char big[60000];
static const size_t dgram_lens[] = {0, 1, 700, 60000};
static char dgram_b_name[128];
static socklen_t dgram_b_name_len;

static struct pair make_pair(int type) {
  int sv[2];
  SETUP(socketpair(AF_UNIX, type, 0, sv) == 0, "socketpair(%d)", type);
  struct pair p = {sv[0], sv[1], type};
  return p;
}

static void set_int(int fd, int opt, int value) {
  SETUP(setsockopt(fd, SOL_SOCKET, opt, &value, sizeof value) == 0, "setsockopt %d", opt);
}

static int get_int(int fd, int opt) {
  int v = -1;
  socklen_t len = sizeof v;
  if (getsockopt(fd, SOL_SOCKET, opt, &v, &len) < 0)
    return -1000;
  return v;
}

static void send_all(int fd, const void *buf, size_t len) {
  SETUP(send(fd, buf, len, MSG_NOSIGNAL) == (ssize_t)len, "send %zu bytes", len);
}

/* One message (or stream read) into buf; returns its length, -1 on error.
 * creds gets the SCM_CREDENTIALS when there are some (pid -1 otherwise). */
static ssize_t recv_one(int fd, char *buf, size_t cap, struct ucred *creds, int flags) {
  char control[CMSG_SPACE(sizeof(struct ucred))];
  struct iovec iov = {buf, cap};
  struct msghdr m;
  memset(&m, 0, sizeof m);
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  ssize_t n = recvmsg(fd, &m, flags);
  if (creds) {
    creds->pid = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); n >= 0 && c; c = CMSG_NXTHDR(&m, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS)
        memcpy(creds, CMSG_DATA(c), sizeof *creds);
  }
  return n;
}

static void expect_text(int fd, const char *want, const char *what) {
  char buf[256];
  ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, (size_t)n) == 0, "%s: got %zd bytes '%.*s', want '%s' (%s)",
        what, n, n > 0 ? (int)n : 0, buf, want, n < 0 ? strerror(errno) : "");
}

/* Both ends can still send to each other. */
static void check_talks(struct pair *p, const char *what) {
  char buf[64];
  CHECK(send(p->a, "ping", 4, MSG_NOSIGNAL) == 4, "%s: a send: %s", what, strerror(errno));
  ssize_t n = recv(p->b, buf, sizeof buf, MSG_DONTWAIT);
  CHECK(n == 4 && memcmp(buf, "ping", 4) == 0, "%s: b got %zd", what, n);
  CHECK(send(p->b, "pong!", 5, MSG_NOSIGNAL) == 5, "%s: b send: %s", what, strerror(errno));
  n = recv(p->a, buf, sizeof buf, MSG_DONTWAIT);
  CHECK(n == 5 && memcmp(buf, "pong!", 5) == 0, "%s: a got %zd", what, n);
}

static void check_stream(void) {
  char buf[256];
  struct ucred cred;
  ssize_t n = recv_one(stream_p.b, buf, sizeof buf, &cred, MSG_DONTWAIT);
  CHECK(n == 11 && memcmp(buf, "hello world", 11) == 0, "stream b: got %zd bytes", n);
  CHECK(cred.pid != -1, "stream b: no SCM_CREDENTIALS with the data");
  CHECK(cred.uid == getuid() && cred.gid == getgid(), "stream b: credentials uid %u gid %u, want %u %u",
        cred.uid, cred.gid, getuid(), getgid());
  expect_text(stream_p.a, "back", "stream a");
  CHECK(recv(stream_p.a, buf, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "stream a: more data than queued");
  CHECK(fcntl(stream_p.a, F_GETFL) & O_NONBLOCK, "stream a lost O_NONBLOCK");
  CHECK(!(fcntl(stream_p.b, F_GETFL) & O_NONBLOCK), "stream b gained O_NONBLOCK");
  CHECK(get_int(stream_p.b, SO_PASSCRED) == 1, "stream b lost SO_PASSCRED");
  CHECK(get_int(stream_p.a, SO_PASSCRED) == 0, "stream a gained SO_PASSCRED");
  CHECK(get_int(stream_p.a, SO_RCVLOWAT) == 2, "stream a SO_RCVLOWAT %d", get_int(stream_p.a, SO_RCVLOWAT));
  check_talks(&stream_p, "stream");
}

static void check_dgram(void) {
  static char buf[65536];
  struct ucred cred;
  for (size_t i = 0; i < sizeof dgram_lens / sizeof dgram_lens[0]; i++) {
    ssize_t n = recv_one(dgram_p.b, buf, sizeof buf, &cred, MSG_DONTWAIT);
    CHECK(n == (ssize_t)dgram_lens[i], "dgram b message %zu: %zd bytes, want %zu (%s)", i, n, dgram_lens[i],
          n < 0 ? strerror(errno) : "");
    if (n > 0)
      CHECK(mismatch(buf, (size_t)n, 100 + i) < 0, "dgram b message %zu: wrong bytes", i);
    CHECK(cred.pid != -1 && cred.uid == getuid(), "dgram b message %zu: credentials", i);
  }
  CHECK(recv(dgram_p.b, buf, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "dgram b: more messages than queued");
  struct sockaddr_un from;
  socklen_t len = sizeof from;
  ssize_t n = recvfrom(dgram_p.a, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &len);
  CHECK(n == 3 && memcmp(buf, "one", 3) == 0, "dgram a first: %zd", n);
  CHECK(len == dgram_b_name_len && memcmp(&from, dgram_b_name, len) == 0,
        "dgram a: the sender's (b's autobound) name changed");
  expect_text(dgram_p.a, "second", "dgram a second");
  struct sockaddr_un now;
  len = sizeof now;
  CHECK(getsockname(dgram_p.b, (struct sockaddr *)&now, &len) == 0 && len == dgram_b_name_len &&
            memcmp(&now, dgram_b_name, len) == 0,
        "dgram b: autobound name changed (len %u, was %u)", len, dgram_b_name_len);
  CHECK(get_int(dgram_p.b, SO_PASSCRED) == 1, "dgram b lost SO_PASSCRED");
  check_talks(&dgram_p, "dgram");
}

static void check_seqpacket(void) {
  char buf[256];
  CHECK(get_int(seq_p.b, SO_PEEK_OFF) == 4, "seqpacket b SO_PEEK_OFF %d, want 4", get_int(seq_p.b, SO_PEEK_OFF));
  set_int(seq_p.b, SO_PEEK_OFF, -1);
  expect_text(seq_p.b, "first", "seqpacket b 1");
  expect_text(seq_p.b, "", "seqpacket b 2");
  expect_text(seq_p.b, "third message", "seqpacket b 3");
  expect_text(seq_p.a, "to a", "seqpacket a");
  CHECK(recv(seq_p.b, buf, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "seqpacket b: more messages than queued");
  struct timeval tv;
  socklen_t len = sizeof tv;
  CHECK(getsockopt(seq_p.a, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) == 0 && tv.tv_sec == 3 && tv.tv_usec == 500000,
        "seqpacket a SO_RCVTIMEO %ld.%06ld", (long)tv.tv_sec, (long)tv.tv_usec);
  CHECK(get_int(seq_p.b, SO_SNDBUF) == 2 * 30000, "seqpacket b SO_SNDBUF %d", get_int(seq_p.b, SO_SNDBUF));
  CHECK(get_int(seq_p.a, SO_TYPE) == SOCK_SEQPACKET, "seqpacket type %d", get_int(seq_p.a, SO_TYPE));
  check_talks(&seq_p, "seqpacket");
}

static void check_half(void) {
  char buf[16];
  expect_text(half_p.b, "bye", "half b");
  CHECK(recv(half_p.b, buf, sizeof buf, MSG_DONTWAIT) == 0, "half b: no end of file after 'bye'");
  CHECK(send(half_p.a, "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "half a: could send after SHUT_WR");
  CHECK(send(half_p.b, "still", 5, MSG_NOSIGNAL) == 5, "half b: send %s", strerror(errno));
  expect_text(half_p.a, "still", "half a");
}

int main(void) {
  install_trigger(SA_RESTART);
  stream_p = make_pair(SOCK_STREAM);
  set_int(stream_p.b, SO_PASSCRED, 1);
  send_all(stream_p.a, "hello ", 6);
  send_all(stream_p.a, "world", 5);
  send_all(stream_p.b, "back", 4);
  SETUP(fcntl(stream_p.a, F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");
  set_int(stream_p.a, SO_RCVLOWAT, 2);

  dgram_p = make_pair(SOCK_DGRAM);
  set_int(dgram_p.b, SO_PASSCRED, 1);
  for (size_t i = 0; i < sizeof dgram_lens / sizeof dgram_lens[0]; i++) {
    fill(big, dgram_lens[i], 100 + i);
    send_all(dgram_p.a, big, dgram_lens[i]);
  }
  send_all(dgram_p.b, "one", 3);
  send_all(dgram_p.b, "second", 6);
  dgram_b_name_len = sizeof dgram_b_name;
  SETUP(getsockname(dgram_p.b, (struct sockaddr *)dgram_b_name, &dgram_b_name_len) == 0, "getsockname");
  SETUP(dgram_b_name_len > sizeof(sa_family_t), "SO_PASSCRED did not autobind the sender");

  seq_p = make_pair(SOCK_SEQPACKET);
  send_all(seq_p.a, "first", 5);
  send_all(seq_p.a, "", 0);
  send_all(seq_p.a, "third message", 13);
  send_all(seq_p.b, "to a", 4);
  struct timeval tv = {3, 500000};
  SETUP(setsockopt(seq_p.a, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0, "SO_RCVTIMEO");
  set_int(seq_p.b, SO_SNDBUF, 30000);
  set_int(seq_p.b, SO_PEEK_OFF, 4);

  half_p = make_pair(SOCK_STREAM);
  send_all(half_p.a, "bye", 3);
  SETUP(shutdown(half_p.a, SHUT_WR) == 0, "shutdown");

  READY();
  wait_for_trigger();

  check_stream();
  check_dgram();
  check_seqpacket();
  check_half();
  return FINISH();
}
