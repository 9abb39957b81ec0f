/* Half-closed, closing and closed TCP connections on loopback, both ends in
 * the tree:
 *   P1 (IPv4) and P5 (IPv6): A shut its write side (FIN_WAIT2), B has A's
 *      bytes and FIN unread (CLOSE_WAIT), A has B's bytes unread;
 *   P2: A shut its write side behind data the peer's full window holds back
 *      (FIN_WAIT1, FIN not sent yet);
 *   P3: as P2, and B sent bytes and its FIN, which A received (CLOSING);
 *   P4: A in FIN_WAIT2 with a full receive queue; B received A's FIN, then
 *      shut its side behind data held back (LAST_ACK, FIN not sent yet);
 *   P6: a connection that ended both ways (CLOSE) with unread bytes;
 *   P7: a bound, unconnected socket and a fresh one.
 * With an argument, a state the dump must refuse (the program is then
 * checked to be untouched): "syn-sent" (a non-blocking connect to a
 * listener whose accept queue is full) or "reset" (a connection reset by
 * its peer, ECONNRESET pending).
 * After restore each end reads exactly the bytes that were on their way,
 * then EOF where a FIN came (once, and only there); writes fail with EPIPE
 * after our own shutdown and work before it; the closed socket gives its
 * bytes, EOF, EPIPE and no error; the bound socket keeps its port.
 */
// Cases (the format is in CMakeLists.txt):
// Half-closed, closing and ended TCP connections (FIN_WAIT1/2, CLOSE_WAIT,
// LAST_ACK, CLOSING, CLOSE with unread bytes), IPv4 and IPv6: bytes, EOF
// once, EPIPE.
// stasis-case: program.tcp_halfclosed SERIAL ${PROGRAM}
// stasis-case: program.tcp_halfclosed.cycles3 SERIAL ${PROGRAM} --cycles 3
// Refused, naming pid, fd, state and addresses: a connect() in progress, and
// a reset connection whose error (ECONNRESET) is still pending.
// stasis-case: program.tcp_refuse_syn_sent ${PROGRAM} syn-sent --expect-dump-failure [=[(?is)pid {pid}\b.*fd \d+.*127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+ in state SYN_SENT]=]
// stasis-case: program.tcp_refuse_reset ${PROGRAM} reset --expect-dump-failure [=[(?is)pid {pid}\b.*fd \d+.*state CLOSE has a pending error]=]
// stasis-selftest: selftest.tcp_halfclosed ${PROGRAM}
#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#define SMALL 4096
#define MAXQ (1 << 20)

static int tcp_state(int fd) {
  struct tcp_info info;
  socklen_t len = sizeof(info);
  memset(&info, 0, sizeof(info));
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0) return -1;
  return info.tcpi_state;
}

static int wait_state(int fd, int state) {
  for (int i = 0; i < 2000 && tcp_state(fd) != state; i++) usleep(1000);
  return tcp_state(fd);
}

/* A connects to B. Small buffers where asked, set before the handshake. */
static void pair(int family, int a_rcvbuf, int b_rcvbuf, int *a, int *b) {
  struct sockaddr_storage addr;
  socklen_t len;
  loopback_addr(family, &addr, &len);
  int l = socket(family, SOCK_STREAM, 0);
  SETUP(l >= 0, "socket");
  if (b_rcvbuf) SETUP(setsockopt(l, SOL_SOCKET, SO_RCVBUF, &b_rcvbuf, sizeof(int)) == 0, "rcvbuf");
  SETUP(bind(l, (struct sockaddr *)&addr, len) == 0 && listen(l, 1) == 0, "listen");
  SETUP(getsockname(l, (struct sockaddr *)&addr, &len) == 0, "getsockname");
  *a = socket(family, SOCK_STREAM, 0);
  if (a_rcvbuf) SETUP(setsockopt(*a, SOL_SOCKET, SO_RCVBUF, &a_rcvbuf, sizeof(int)) == 0, "rcvbuf");
  SETUP(connect(*a, (struct sockaddr *)&addr, len) == 0, "connect");
  *b = accept(l, NULL, NULL);
  SETUP(*b >= 0, "accept");
  close(l);
}

/* Writes the pattern until the peer's window and our buffer are full. */
static size_t stuff(int fd, uint64_t seed) {
  static unsigned char buf[MAXQ];
  fill(buf, sizeof(buf), seed);
  int small = SMALL;
  SETUP(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0, "sndbuf");
  size_t done = 0;
  for (;;) {
    ssize_t n = send(fd, buf + done, sizeof(buf) - done, MSG_DONTWAIT);
    if (n <= 0) break;
    done += (size_t)n;
  }
  SETUP(done > 0 && done < sizeof(buf), "stuffed %zu bytes", done);
  return done;
}

/* Reads until EOF (or 5 s of silence); returns the count, -1 on error. */
static long read_to_eof(int fd, unsigned char *buf, size_t cap) {
  size_t got = 0;
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 5000) <= 0) return -2;
    ssize_t r = read(fd, buf + got, cap - got);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r < 0) return -1;
    if (r == 0) return (long)got;
    got += (size_t)r;
    if (got == cap) return (long)got;
  }
}

/* Exactly `want` then EOF, twice (EOF stays). */
static void expect_then_eof(int fd, const char *want, size_t n, const char *who) {
  static unsigned char buf[MAXQ];
  long got = read_to_eof(fd, buf, sizeof(buf));
  CHECK(got == (long)n && memcmp(buf, want, n) == 0, "%s: read %ld bytes before EOF, want %zu", who, got, n);
  CHECK(read(fd, buf, 1) == 0, "%s: a second read is not EOF", who);
}

static void expect_pattern_then_eof(int fd, size_t n, uint64_t seed, const char *who) {
  static unsigned char buf[MAXQ];
  long got = read_to_eof(fd, buf, sizeof(buf));
  CHECK(got == (long)n, "%s: read %ld bytes before EOF, want %zu", who, got, n);
  CHECK(got != (long)n || mismatch(buf, n, seed) < 0, "%s: data damaged at %ld", who, mismatch(buf, n, seed));
  CHECK(read(fd, buf, 1) == 0, "%s: a second read is not EOF", who);
}

/* Exactly these bytes and nothing more for now (no EOF). */
static void expect_open(int fd, const char *want, size_t n, const char *who) {
  char buf[64] = {0};
  size_t got = 0;
  while (got < n) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 5000) <= 0) break;
    ssize_t r = read(fd, buf + got, n - got);
    if (r <= 0) break;
    got += (size_t)r;
  }
  CHECK(got == n && memcmp(buf, want, n) == 0, "%s: got %zu bytes '%.*s'", who, got, (int)got, buf);
  CHECK(recv(fd, buf, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "%s: more than expected, or EOF", who);
}

static void expect_epipe(int fd, const char *who) {
  errno = 0;
  CHECK(send(fd, "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "%s: write after shutdown: errno %d", who, errno);
}

static void expect_write_ok(int from, int to, const char *who) {
  CHECK(send(from, "more", 4, MSG_NOSIGNAL) == 4, "%s: write failed: %s", who, strerror(errno));
  expect_open(to, "more", 4, who);
}

static int port_of(int fd) {
  struct sockaddr_storage a;
  socklen_t len = sizeof(a);
  if (getsockname(fd, (struct sockaddr *)&a, &len) < 0) return -1;
  return ntohs(((struct sockaddr_in *)&a)->sin_port);
}

static void half_closed(int family, int *a, int *b) {
  pair(family, 0, 0, a, b);
  SETUP(write(*a, "a-data", 6) == 6 && shutdown(*a, SHUT_WR) == 0, "a");
  SETUP(write(*b, "b-data", 6) == 6, "b");
}

static void check_half_closed(int a, int b, const char *name) {
  char who[32];
  snprintf(who, sizeof(who), "%s FIN_WAIT2", name);
  CHECK(wait_state(a, TCP_FIN_WAIT2) == TCP_FIN_WAIT2, "%s: state %d", who, tcp_state(a));
  expect_open(a, "b-data", 6, who);
  expect_epipe(a, who);
  snprintf(who, sizeof(who), "%s CLOSE_WAIT", name);
  expect_then_eof(b, "a-data", 6, who);
  expect_write_ok(b, a, who);
  CHECK(shutdown(b, SHUT_WR) == 0, "%s: shutdown", who);
  expect_then_eof(a, "", 0, who);
}

static int refused(const char *mode) {
  install_trigger(0);
  int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0); /* the lowest fd: refused first */
  struct sockaddr_storage addr;
  socklen_t len;
  loopback_addr(AF_INET, &addr, &len);
  if (strcmp(mode, "syn-sent") == 0) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    SETUP(bind(l, (struct sockaddr *)&addr, len) == 0 && listen(l, 0) == 0, "listen");
    SETUP(getsockname(l, (struct sockaddr *)&addr, &len) == 0, "getsockname");
    int x = socket(AF_INET, SOCK_STREAM, 0);
    SETUP(connect(x, (struct sockaddr *)&addr, len) == 0, "connect");
    usleep(20000);
    SETUP(connect(c, (struct sockaddr *)&addr, len) < 0 && errno == EINPROGRESS, "connect");
    usleep(20000);
    SETUP(tcp_state(c) == TCP_SYN_SENT, "state %d", tcp_state(c));
    READY();
    wait_for_trigger();
    CHECK(tcp_state(c) == TCP_SYN_SENT || tcp_state(c) == TCP_ESTABLISHED, "state %d", tcp_state(c));
    return FINISH();
  }
  int l = socket(AF_INET, SOCK_STREAM, 0);
  SETUP(bind(l, (struct sockaddr *)&addr, len) == 0 && listen(l, 1) == 0, "listen");
  SETUP(getsockname(l, (struct sockaddr *)&addr, &len) == 0, "getsockname");
  connect(c, (struct sockaddr *)&addr, len);
  int b = accept(l, NULL, NULL);
  SETUP(b >= 0, "accept");
  struct linger lg = {1, 0};
  SETUP(setsockopt(b, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0, "linger");
  close(b); /* RST */
  usleep(20000);
  SETUP(tcp_state(c) == TCP_CLOSE, "state %d", tcp_state(c));
  READY();
  wait_for_trigger();
  int err = 0;
  socklen_t elen = sizeof(err);
  CHECK(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err == ECONNRESET, "SO_ERROR %d", err);
  return FINISH();
}

int main(int argc, char **argv) {
  if (argc > 1) return refused(argv[1]);
  install_trigger(0);
  int a1, b1, a2, b2, a3, b3, a4, b4, a5, b5, a6, b6;
  half_closed(AF_INET, &a1, &b1);
  half_closed(AF_INET6, &a5, &b5);

  pair(AF_INET, 0, SMALL, &a2, &b2);
  size_t n2 = stuff(a2, 2);
  SETUP(shutdown(a2, SHUT_WR) == 0, "shutdown");

  pair(AF_INET, 0, SMALL, &a3, &b3);
  size_t n3 = stuff(a3, 3);
  SETUP(shutdown(a3, SHUT_WR) == 0, "shutdown");
  SETUP(write(b3, "b-bye", 5) == 5 && shutdown(b3, SHUT_WR) == 0, "b3");

  pair(AF_INET, SMALL, 0, &a4, &b4);
  SETUP(shutdown(a4, SHUT_WR) == 0, "shutdown");
  usleep(20000);
  size_t n4 = stuff(b4, 4);
  SETUP(shutdown(b4, SHUT_WR) == 0, "shutdown");

  pair(AF_INET, 0, 0, &a6, &b6);
  SETUP(write(b6, "last-words", 10) == 10, "write");
  close(b6);
  usleep(20000);
  SETUP(shutdown(a6, SHUT_WR) == 0, "shutdown");

  struct sockaddr_storage addr;
  socklen_t len;
  loopback_addr(AF_INET, &addr, &len);
  int bound = socket(AF_INET, SOCK_STREAM, 0), fresh = socket(AF_INET6, SOCK_STREAM, 0);
  SETUP(bind(bound, (struct sockaddr *)&addr, len) == 0, "bind");
  int bound_port = port_of(bound);

  usleep(100000);
  SETUP(tcp_state(a1) == TCP_FIN_WAIT2 && tcp_state(b1) == TCP_CLOSE_WAIT, "P1 states %d %d", tcp_state(a1), tcp_state(b1));
  SETUP(tcp_state(a5) == TCP_FIN_WAIT2 && tcp_state(b5) == TCP_CLOSE_WAIT, "P5 states");
  SETUP(tcp_state(a2) == TCP_FIN_WAIT1 && tcp_state(b2) == TCP_ESTABLISHED, "P2 states %d %d", tcp_state(a2), tcp_state(b2));
  SETUP(tcp_state(a3) == TCP_CLOSING && tcp_state(b3) == TCP_FIN_WAIT2, "P3 states %d %d", tcp_state(a3), tcp_state(b3));
  SETUP(tcp_state(a4) == TCP_FIN_WAIT2 && tcp_state(b4) == TCP_LAST_ACK, "P4 states %d %d", tcp_state(a4), tcp_state(b4));
  SETUP(tcp_state(a6) == TCP_CLOSE, "P6 state %d", tcp_state(a6));
  READY();
  wait_for_trigger();

  check_half_closed(a1, b1, "P1");
  check_half_closed(a5, b5, "P5 (IPv6)");

  /* P2: B gets the whole stream then one EOF; A's FIN is acked then. */
  expect_write_ok(b2, a2, "P2 ESTABLISHED");
  expect_pattern_then_eof(b2, n2, 2, "P2 ESTABLISHED");
  CHECK(wait_state(a2, TCP_FIN_WAIT2) == TCP_FIN_WAIT2, "P2 FIN_WAIT1: state %d after the drain", tcp_state(a2));
  expect_epipe(a2, "P2 FIN_WAIT1");

  /* P3: both directions closed. */
  expect_then_eof(a3, "b-bye", 5, "P3 CLOSING");
  expect_pattern_then_eof(b3, n3, 3, "P3 FIN_WAIT2");
  expect_epipe(a3, "P3 CLOSING");
  expect_epipe(b3, "P3 FIN_WAIT2");

  /* P4 */
  expect_then_eof(b4, "", 0, "P4 LAST_ACK");
  expect_pattern_then_eof(a4, n4, 4, "P4 FIN_WAIT2");
  expect_epipe(a4, "P4 FIN_WAIT2");
  expect_epipe(b4, "P4 LAST_ACK");

  /* P6: the ended connection. */
  expect_then_eof(a6, "last-words", 10, "P6 CLOSE");
  expect_epipe(a6, "P6 CLOSE");
  int err = -1;
  socklen_t elen = sizeof(err);
  CHECK(getsockopt(a6, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err == 0, "P6: SO_ERROR %d", err);
  CHECK(tcp_state(a6) == TCP_CLOSE, "P6: state %d", tcp_state(a6));
  CHECK(getpeername(a6, (struct sockaddr *)&addr, &len) < 0 && errno == ENOTCONN, "P6: has a peer");

  /* P7 */
  CHECK(port_of(bound) == bound_port, "bound port %d, was %d", port_of(bound), bound_port);
  CHECK(tcp_state(bound) == TCP_CLOSE && listen(bound, 1) == 0, "the bound socket cannot listen");
  int c = socket(AF_INET, SOCK_STREAM, 0);
  loopback_addr(AF_INET, &addr, &len);
  ((struct sockaddr_in *)&addr)->sin_port = htons(bound_port);
  CHECK(connect(c, (struct sockaddr *)&addr, len) == 0, "connect to the bound socket after listen()");
  CHECK(port_of(fresh) == 0 && tcp_state(fresh) == TCP_CLOSE, "the fresh socket changed");
  return FINISH();
}
