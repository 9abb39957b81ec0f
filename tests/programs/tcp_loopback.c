/* TCP on loopback, both ends in the tree: an IPv4 listener with an accepted
 * connection and an IPv6 pair, with unread data queued both ways (1 MB from
 * client to server, more than the socket buffers hold at once, so part of
 * it is still in the client's send queue), options that must survive
 * (TCP_NODELAY, SO_KEEPALIVE with its timers), O_NONBLOCK on one end. After
 * restore: every byte arrives once, in order; the connections still talk;
 * the listener still accepts; addresses and ports are the same.
 */
// Cases (the format is in CMakeLists.txt):
// TCP on loopback, both ends in the tree, IPv4 and IPv6, 1 MB in flight.
// SERIAL: the restore rebinds the same ports in the host's network namespace,
// which a test running alongside could take in between.
// stasis-case: program.tcp_loopback SERIAL ${PROGRAM}
// stasis-case: program.tcp_loopback.cycles3 SERIAL ${PROGRAM} --cycles 3
#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#define BIG (1 << 20)

static unsigned char big[BIG];

static int listen_on(int family, struct sockaddr_storage *addr, socklen_t *len) {
  int fd = socket(family, SOCK_STREAM, 0);
  SETUP(fd >= 0, "socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  loopback_addr(family, addr, len);
  SETUP(bind(fd, (struct sockaddr *)addr, *len) == 0, "bind");
  SETUP(listen(fd, 16) == 0, "listen");
  SETUP(getsockname(fd, (struct sockaddr *)addr, len) == 0, "getsockname");
  return fd;
}

static void pair(int family, int *listener, int *client, int *server) {
  struct sockaddr_storage addr;
  socklen_t len;
  *listener = listen_on(family, &addr, &len);
  *client = socket(family, SOCK_STREAM, 0);
  SETUP(connect(*client, (struct sockaddr *)&addr, len) == 0, "connect");
  *server = accept(*listener, NULL, NULL);
  SETUP(*server >= 0, "accept");
}

/* Reads exactly n bytes (the socket may be non-blocking). */
static long read_all(int fd, unsigned char *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 5000) <= 0) return (long)got;
    ssize_t r = read(fd, buf + got, n - got);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (r <= 0) return (long)got;
    got += (size_t)r;
  }
  return (long)got;
}

static int port_of(int fd, int peer) {
  struct sockaddr_storage a;
  socklen_t len = sizeof(a);
  if ((peer ? getpeername : getsockname)(fd, (struct sockaddr *)&a, &len) < 0) return -1;
  return ntohs(a.ss_family == AF_INET ? ((struct sockaddr_in *)&a)->sin_port : ((struct sockaddr_in6 *)&a)->sin6_port);
}

int main(void) {
  install_trigger(0);
  int l4, c4, s4, l6, c6, s6;
  pair(AF_INET, &l4, &c4, &s4);
  pair(AF_INET6, &l6, &c6, &s6);
  int one = 1, idle = 77;
  SETUP(setsockopt(c4, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0, "nodelay");
  SETUP(setsockopt(s4, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) == 0, "keepalive");
  SETUP(setsockopt(s4, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) == 0, "keepidle");
  fcntl(c6, F_SETFL, O_NONBLOCK);
  int ports[6] = {port_of(l4, 0), port_of(c4, 0), port_of(s4, 1), port_of(l6, 0), port_of(c6, 0), port_of(s6, 1)};

  /* 1 MB client->server (the rest stays in the client's send queue), a
   * short message server->client, and both ways on the IPv6 pair. */
  fill(big, BIG, 42);
  int flags = fcntl(c4, F_GETFL);
  fcntl(c4, F_SETFL, flags | O_NONBLOCK);
  size_t queued = 0;
  while (queued < BIG) {
    ssize_t n = write(c4, big + queued, BIG - queued);
    if (n <= 0) break;
    queued += (size_t)n;
  }
  fcntl(c4, F_SETFL, flags);
  SETUP(write(s4, "hello-client", 12) == 12, "write");
  SETUP(write(c6, "six-to-server", 13) == 13, "write");
  SETUP(write(s6, "six-to-client", 13) == 13, "write");
  usleep(100000);
  READY();
  wait_for_trigger();

  /* The rest of the 1 MB can now be written; read all of it, in order. */
  static unsigned char got[BIG];
  size_t rest = queued;
  while (rest < BIG) {
    ssize_t n = write(c4, big + rest, BIG - rest);
    if (n <= 0) break;
    rest += (size_t)n;
    if (rest == BIG) break;
  }
  CHECK(read_all(s4, got, BIG) == BIG, "the server did not get all 1 MB");
  CHECK(memcmp(got, big, BIG) == 0, "the 1 MB stream is damaged");
  char buf[64] = {0};
  CHECK(read_all(c4, (unsigned char *)buf, 12) == 12 && memcmp(buf, "hello-client", 12) == 0, "c4 got '%s'", buf);
  CHECK(read_all(s6, (unsigned char *)buf, 13) == 13 && memcmp(buf, "six-to-server", 13) == 0, "s6 got '%.13s'", buf);
  CHECK(read_all(c6, (unsigned char *)buf, 13) == 13 && memcmp(buf, "six-to-client", 13) == 0, "c6 got '%.13s'", buf);
  /* Still talking, both ways. */
  CHECK(write(s6, "again", 5) == 5 && read_all(c6, (unsigned char *)buf, 5) == 5 && memcmp(buf, "again", 5) == 0,
        "the IPv6 pair no longer talks");
  /* Options and flags. */
  int v = 0;
  socklen_t len = sizeof(v);
  getsockopt(c4, IPPROTO_TCP, TCP_NODELAY, &v, &len);
  CHECK(v == 1, "TCP_NODELAY lost");
  getsockopt(s4, SOL_SOCKET, SO_KEEPALIVE, &v, &len);
  CHECK(v == 1, "SO_KEEPALIVE lost");
  getsockopt(s4, IPPROTO_TCP, TCP_KEEPIDLE, &v, &len);
  CHECK(v == 77, "TCP_KEEPIDLE %d", v);
  CHECK(fcntl(c6, F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
  int now[6] = {port_of(l4, 0), port_of(c4, 0), port_of(s4, 1), port_of(l6, 0), port_of(c6, 0), port_of(s6, 1)};
  CHECK(memcmp(now, ports, sizeof(now)) == 0, "ports changed");
  /* The listener still accepts. */
  struct sockaddr_storage addr;
  socklen_t alen = sizeof(addr);
  getsockname(l4, (struct sockaddr *)&addr, &alen);
  int c = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(connect(c, (struct sockaddr *)&addr, alen) == 0, "connect to the restored listener");
  int s = accept(l4, NULL, NULL);
  CHECK(s >= 0 && write(c, "new", 3) == 3 && read_all(s, (unsigned char *)buf, 3) == 3, "new connection does not work");
  return FINISH();
}
