/* tcp_backlog: loopback TCP connections waiting in listeners' accept queues,
 * both ends in the tree (the dump accepts them at its point of no return;
 * the restore connects the clients again and refills the queues).
 *
 * Three listeners: IPv4 127.0.0.1, IPv6 ::1, and a dual-stack [::] one with
 * IPv4 clients. Each has three connections waiting, in this order:
 *   0: the client sent a short text;
 *   1: the client sent nothing; its socket is non-blocking;
 *   2: the client sent a lot: on the IPv4 listener, until its send would
 *      block (so part of it is still in the client's send queue), on the
 *      others 100 KB.
 * The clients have received nothing.
 *
 * After restore: accept() returns the connections in the same order, each
 * with its client's address and port as peer and the listener's address as
 * its own; the data byte for byte and nothing more; the clients still have
 * nothing to read; then both directions work.
 *
 * With the argument "outside", one more connection waits on the IPv4
 * listener, from a helper outside the tree: the dump must refuse, naming the
 * pid, the listener's fd and address and the peer. The program then checks
 * the same things without a restore (and answers the helper).
 */
// Cases (the format is in CMakeLists.txt):
// Loopback connections waiting in accept queues (IPv4, IPv6, dual-stack),
// with data, one with part of it still in the client's send queue
// (src/kinds/tcp_pending.cc).
// stasis-case: program.tcp_backlog SERIAL ${PROGRAM} --inspect
// stasis-case: program.tcp_backlog.cycles3 SERIAL ${PROGRAM} --cycles 3
// --leave-running would take them from the program: refused.
// stasis-case: program.tcp_backlog.leave_running SERIAL ${PROGRAM} --leave-running --expect-dump-failure [=[(?is)^(?=.*\b{pid}\b)(?=.*TCP listener)(?=.*accept queue)(?=.*--leave-running)]=]
// A waiting connection from a helper outside the tree: refused, naming the
// pid, the listener's fd and address and the peer.
// stasis-case: program.tcp_backlog_outside SERIAL ${PROGRAM} outside --expect-dump-failure [=[(?is)^(?=.*\b{pid}\b)(?=.*\bfd\W{0,3}3\b)(?=.*TCP listener 127\.0\.0\.1:\d+)(?=.*from 127\.0\.0\.1:\d+)(?=.*outside the dumped tree)]=]
// stasis-selftest: selftest.tcp_backlog ${PROGRAM}
#include "common.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define NLIST 3
#define NCONN 3
#define MAXBIG (8 << 20)
#define SMALLBIG (100 * 1024)

struct listener {
  const char *name;
  int fd;
  struct sockaddr_storage addr; /* what the clients connect to */
  socklen_t addr_len;
  int clients[NCONN];
  size_t big_len; /* sent by client 2 */
};

static unsigned char big[MAXBIG], got[MAXBIG];

static int listen_on(struct listener *l, int family, const char *bind_addr, const char *connect_addr) {
  struct sockaddr_storage b;
  memset(&b, 0, sizeof b);
  socklen_t blen;
  if (family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&b;
    a->sin_family = AF_INET;
    inet_pton(AF_INET, bind_addr, &a->sin_addr);
    blen = sizeof *a;
  } else {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&b;
    a->sin6_family = AF_INET6;
    inet_pton(AF_INET6, bind_addr, &a->sin6_addr);
    blen = sizeof *a;
  }
  int fd = socket(family, SOCK_STREAM, 0);
  SETUP(fd >= 0, "socket");
  if (family == AF_INET6) {
    int v6only = strchr(connect_addr, ':') != NULL;
    SETUP(setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) == 0, "IPV6_V6ONLY");
  }
  SETUP(bind(fd, (struct sockaddr *)&b, blen) == 0, "bind %s", bind_addr);
  SETUP(listen(fd, 16) == 0, "listen");
  SETUP(getsockname(fd, (struct sockaddr *)&b, &blen) == 0, "getsockname");
  int port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&b)->sin_port : ((struct sockaddr_in6 *)&b)->sin6_port);
  memset(&l->addr, 0, sizeof l->addr);
  if (strchr(connect_addr, ':') == NULL) {
    struct sockaddr_in *a = (struct sockaddr_in *)&l->addr;
    a->sin_family = AF_INET;
    inet_pton(AF_INET, connect_addr, &a->sin_addr);
    a->sin_port = htons((uint16_t)port);
    l->addr_len = sizeof *a;
  } else {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&l->addr;
    a->sin6_family = AF_INET6;
    inet_pton(AF_INET6, connect_addr, &a->sin6_addr);
    a->sin6_port = htons((uint16_t)port);
    l->addr_len = sizeof *a;
  }
  l->fd = fd;
  return fd;
}

static int connect_client(const struct listener *l) {
  int fd = socket(l->addr.ss_family, SOCK_STREAM, 0);
  SETUP(fd >= 0 && connect(fd, (const struct sockaddr *)&l->addr, l->addr_len) == 0, "connect %s", l->name);
  return fd;
}

static void fill_queue(struct listener *l, int until_full) {
  char text[64];
  snprintf(text, sizeof text, "client 0 of %s", l->name);
  l->clients[0] = connect_client(l);
  SETUP(send(l->clients[0], text, strlen(text), 0) == (ssize_t)strlen(text), "send");
  l->clients[1] = connect_client(l);
  fcntl(l->clients[1], F_SETFL, fcntl(l->clients[1], F_GETFL) | O_NONBLOCK);
  l->clients[2] = connect_client(l);
  size_t limit = until_full ? MAXBIG : SMALLBIG;
  int fl = fcntl(l->clients[2], F_GETFL);
  fcntl(l->clients[2], F_SETFL, fl | O_NONBLOCK);
  l->big_len = 0;
  while (l->big_len < limit) {
    ssize_t n = send(l->clients[2], big + l->big_len, limit - l->big_len, 0);
    if (n < 0 && errno == EAGAIN) {
      /* Let loopback settle, then try once more: the window is closed. */
      usleep(50 * 1000);
      n = send(l->clients[2], big + l->big_len, limit - l->big_len, 0);
      if (n < 0 && errno == EAGAIN)
        break;
    }
    SETUP(n > 0, "send big");
    l->big_len += (size_t)n;
  }
  fcntl(l->clients[2], F_SETFL, fl);
}

static int same_addr(const struct sockaddr_storage *a, socklen_t alen, const struct sockaddr_storage *b, socklen_t blen) {
  return alen == blen && memcmp(a, b, alen) == 0;
}

static void nothing_to_read(int fd, const char *what) {
  char b;
  ssize_t n = recv(fd, &b, 1, MSG_DONTWAIT);
  CHECK(n < 0 && errno == EAGAIN, "%s: expected nothing to read, got %zd", what, n);
}

static long read_all(int fd, unsigned char *buf, size_t n) {
  size_t have = 0;
  while (have < n) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 5000) <= 0)
      return (long)have;
    ssize_t r = read(fd, buf + have, n - have);
    if (r <= 0)
      return (long)have;
    have += (size_t)r;
  }
  return (long)have;
}

static void check_listener(struct listener *l) {
  char what[96], text[64];
  for (int i = 0; i < NCONN; i++) {
    snprintf(what, sizeof what, "%s: client %d", l->name, i);
    nothing_to_read(l->clients[i], what);
    int nonblock = (fcntl(l->clients[i], F_GETFL) & O_NONBLOCK) != 0;
    CHECK(nonblock == (i == 1), "%s: O_NONBLOCK is %d", what, nonblock);
  }
  for (int i = 0; i < NCONN; i++) {
    snprintf(what, sizeof what, "%s: connection %d", l->name, i);
    struct sockaddr_storage peer, want, self, target;
    socklen_t plen = sizeof peer, wlen = sizeof want, slen = sizeof self, tlen = sizeof target;
    int c = accept(l->fd, (struct sockaddr *)&peer, &plen);
    CHECK(c >= 0, "%s: accept: %s", what, strerror(errno));
    if (c < 0)
      return;
    /* In accept order, from the same address and port. A dual-stack
     * listener shows its IPv4 clients v4-mapped: compare the ports then. */
    getsockname(l->clients[i], (struct sockaddr *)&want, &wlen);
    getpeername(l->clients[i], (struct sockaddr *)&target, &tlen);
    getsockname(c, (struct sockaddr *)&self, &slen);
    if (peer.ss_family == want.ss_family) {
      CHECK(same_addr(&peer, plen, &want, wlen), "%s: peer address is not its client's", what);
      CHECK(same_addr(&self, slen, &target, tlen), "%s: own address is not the one its client connected to", what);
    } else {
      CHECK(((struct sockaddr_in6 *)&peer)->sin6_port == ((struct sockaddr_in *)&want)->sin_port,
            "%s: peer port is not its client's", what);
      CHECK(((struct sockaddr_in6 *)&peer)->sin6_addr.s6_addr[15] == 1, "%s: peer is not ::ffff:127.0.0.1", what);
    }
    if (i == 0) {
      snprintf(text, sizeof text, "client 0 of %s", l->name);
      long n = read_all(c, got, strlen(text));
      CHECK(n == (long)strlen(text) && memcmp(got, text, (size_t)n) == 0, "%s: got %ld bytes", what, n);
    } else if (i == 2) {
      long n = read_all(c, got, l->big_len);
      CHECK(n == (long)l->big_len && memcmp(got, big, l->big_len) == 0, "%s: got %ld of %zu bytes (or different ones)", what, n, l->big_len);
    }
    nothing_to_read(c, what);
    CHECK(send(c, "reply", 5, 0) == 5, "%s: send reply", what);
    long n = read_all(l->clients[i], got, 5);
    CHECK(n == 5 && memcmp(got, "reply", 5) == 0, "%s: client got %ld bytes of the reply", what, n);
    CHECK(send(l->clients[i], "more", 4, 0) == 4, "%s: client send", what);
    n = read_all(c, got, 4);
    CHECK(n == 4 && memcmp(got, "more", 4) == 0, "%s: server got %ld bytes after restore", what, n);
    close(c);
  }
}

/* A helper outside the tree (double-forked: the runner adopts it) with a
 * connection waiting on l; it waits for the reply, then ends. */
static void outside_helper(const struct listener *l) {
  int p[2];
  SETUP(pipe(p) == 0, "pipe");
  pid_t pid = fork();
  SETUP(pid >= 0, "fork");
  if (pid == 0) {
    if (fork() != 0)
      _exit(0);
    close(p[0]);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (const struct sockaddr *)&l->addr, l->addr_len) != 0)
      _exit(1);
    if (send(fd, "outside", 7, 0) != 7 || write(p[1], "c", 1) != 1)
      _exit(2);
    char buf[8];
    struct timeval tv = {60, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    recv(fd, buf, sizeof buf, MSG_WAITALL);
    _exit(0);
  }
  close(p[1]);
  SETUP(waitpid(pid, NULL, 0) == pid, "waitpid");
  char c;
  SETUP(read(p[0], &c, 1) == 1, "the helper did not connect");
  close(p[0]);
}

int main(int argc, char **argv) {
  int outside = argc > 1 && strcmp(argv[1], "outside") == 0;
  install_trigger(SA_RESTART);
  fill(big, MAXBIG, 21);
  struct listener ls[NLIST] = {{.name = "127.0.0.1"}, {.name = "[::1]"}, {.name = "[::] (IPv4 clients)"}};
  listen_on(&ls[0], AF_INET, "127.0.0.1", "127.0.0.1");
  listen_on(&ls[1], AF_INET6, "::1", "::1");
  listen_on(&ls[2], AF_INET6, "::", "127.0.0.1");
  for (int i = 0; i < NLIST; i++)
    fill_queue(&ls[i], i == 0);
  if (outside)
    outside_helper(&ls[0]);
  usleep(100 * 1000); /* the last segments reach their queues */
  printf("listener 0 fd %d, client 2 sent %zu bytes\n", ls[0].fd, ls[0].big_len);

  READY();
  wait_for_trigger();

  for (int i = 0; i < NLIST; i++)
    check_listener(&ls[i]);
  if (outside) {
    int c = accept(ls[0].fd, NULL, NULL);
    CHECK(c >= 0, "accept the outside connection");
    long n = read_all(c, got, 7);
    CHECK(n == 7 && memcmp(got, "outside", 7) == 0, "outside connection: got %ld bytes", n);
    CHECK(send(c, "reply!!", 7, 0) == 7, "reply to the helper");
  }
  return FINISH();
}
