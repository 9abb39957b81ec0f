/* UDP sockets with datagrams waiting to be read, from several senders:
 *   r4: IPv4 bound to 127.0.0.1, datagrams from 127.0.0.1 and 127.0.0.2
 *       (two senders), sizes 0, 1, 1000 and 60000 bytes, interleaved;
 *   r6: IPv6 bound to [::] (dual stack), from ::1 and from 127.0.0.1 (a
 *       v4-mapped source);
 *   rp: IPv6 bound to ::1, with the program's own SO_PEEK_OFF advanced past
 *       its first datagram;
 *   rc: bound, a datagram from s2, then connected to s1 and one from s1.
 * The senders stay bound (in the tree). After restore every datagram comes
 * back once, in order, with its boundaries and its source address and port;
 * then the queues are empty and new datagrams still flow.
 *
 * With the argument "pending-error": a connected socket with ECONNREFUSED
 * pending (an ICMP port unreachable) must be refused by the dump.
 */
// Cases (the format is in CMakeLists.txt):
// UDP with queued datagrams from several senders, IPv4, IPv6 and v4-mapped:
// order, boundaries, source addresses, the program's SO_PEEK_OFF.
// stasis-case: program.udp_queue SERIAL ${PROGRAM}
// stasis-case: program.udp_queue.cycles3 SERIAL ${PROGRAM} --cycles 3
// stasis-case: program.udp_refuse_pending_error ${PROGRAM} pending-error --expect-dump-failure [=[(?is)pid {pid}\b.*fd \d+.*pending error]=]
// stasis-selftest: selftest.udp_queue ${PROGRAM}
#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#define BIG 60000

struct sent {
  int to;               /* receiver index */
  int from;             /* sender index */
  size_t len;
  uint64_t seed;
};

static struct sockaddr_storage sender_addr[8];
static socklen_t sender_len[8];
static unsigned char buf[BIG + 16], want[BIG + 16];

static int udp_bound(int family, const char *ip, struct sockaddr_storage *out, socklen_t *olen) {
  int fd = socket(family, SOCK_DGRAM, 0);
  SETUP(fd >= 0, "socket");
  struct sockaddr_storage a;
  memset(&a, 0, sizeof(a));
  socklen_t len;
  if (family == AF_INET) {
    struct sockaddr_in *in = (struct sockaddr_in *)&a;
    in->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &in->sin_addr);
    len = sizeof(*in);
  } else {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&a;
    in6->sin6_family = AF_INET6;
    inet_pton(AF_INET6, ip, &in6->sin6_addr);
    len = sizeof(*in6);
    int zero = 0;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  }
  SETUP(bind(fd, (struct sockaddr *)&a, len) == 0, "bind %s", ip);
  *olen = sizeof(*out);
  SETUP(getsockname(fd, (struct sockaddr *)out, olen) == 0, "getsockname");
  return fd;
}

/* The address to send to: loopback for a wildcard-bound socket. */
static void target(const struct sockaddr_storage *bound, int family, struct sockaddr_storage *to, socklen_t *len) {
  memset(to, 0, sizeof(*to));
  int port = ntohs(((struct sockaddr_in *)bound)->sin_port);
  if (family == AF_INET) {
    struct sockaddr_in *in = (struct sockaddr_in *)to;
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *len = sizeof(*in);
  } else {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)to;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    in6->sin6_addr = in6addr_loopback;
    *len = sizeof(*in6);
  }
}

/* Same address and port, a v4-mapped IPv6 source matching an IPv4 one. */
static int same_source(const struct sockaddr_storage *got, const struct sockaddr_storage *sender) {
  unsigned char a[16], b[16];
  int pa, pb;
  size_t la, lb;
  const struct sockaddr_storage *x[2] = {got, sender};
  unsigned char *out[2] = {a, b};
  int *port[2] = {&pa, &pb};
  size_t *len[2] = {&la, &lb};
  for (int i = 0; i < 2; i++) {
    if (x[i]->ss_family == AF_INET) {
      const struct sockaddr_in *in = (const struct sockaddr_in *)x[i];
      memcpy(out[i], &in->sin_addr, 4);
      *port[i] = in->sin_port;
      *len[i] = 4;
    } else {
      const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)x[i];
      int mapped = IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr);
      memcpy(out[i], mapped ? &in6->sin6_addr.s6_addr[12] : in6->sin6_addr.s6_addr, mapped ? 4 : 16);
      *port[i] = in6->sin6_port;
      *len[i] = mapped ? 4 : 16;
    }
  }
  return la == lb && pa == pb && memcmp(a, b, la) == 0;
}

static int pending_error(void) {
  install_trigger(0);
  struct sockaddr_storage a;
  socklen_t len;
  int closed = udp_bound(AF_INET, "127.0.0.1", &a, &len);
  close(closed); /* nobody listens there now */
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  SETUP(connect(fd, (struct sockaddr *)&a, len) == 0, "connect");
  SETUP(send(fd, "x", 1, 0) == 1, "send");
  usleep(50000);
  struct pollfd p = {fd, POLLIN, 0};
  SETUP(poll(&p, 1, 0) == 1 && (p.revents & POLLERR), "no pending error");
  READY();
  wait_for_trigger();
  int err = 0;
  socklen_t elen = sizeof(err);
  CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err == ECONNREFUSED,
        "the pending error is gone: %d", err);
  return FINISH();
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "pending-error") == 0) return pending_error();
  install_trigger(0);
  struct sockaddr_storage raddr[4];
  socklen_t rlen[4];
  int r[4];
  r[0] = udp_bound(AF_INET, "127.0.0.1", &raddr[0], &rlen[0]);
  r[1] = udp_bound(AF_INET6, "::", &raddr[1], &rlen[1]);
  r[2] = udp_bound(AF_INET6, "::1", &raddr[2], &rlen[2]);
  r[3] = udp_bound(AF_INET, "127.0.0.1", &raddr[3], &rlen[3]);
  int s[3];
  s[0] = udp_bound(AF_INET, "127.0.0.1", &sender_addr[0], &sender_len[0]);
  s[1] = udp_bound(AF_INET, "127.0.0.2", &sender_addr[1], &sender_len[1]);
  s[2] = udp_bound(AF_INET6, "::1", &sender_addr[2], &sender_len[2]);
  int family_of[3] = {AF_INET, AF_INET, AF_INET6};

  static const struct sent plan[] = {
      {0, 0, 10, 1},  {0, 1, 0, 2},   {0, 0, BIG, 3}, {0, 1, 1, 4},    {0, 0, 1000, 5},
      {1, 2, 20, 6},  {1, 0, 30, 7},  {1, 2, 0, 8},   {1, 1, 5000, 9}, {2, 2, 11, 10},
      {2, 2, 12, 11}, {2, 2, 13, 12}, {3, 1, 14, 13},
  };
  size_t nplan = sizeof(plan) / sizeof(plan[0]);
  for (size_t i = 0; i < nplan; i++) {
    const struct sent *p = &plan[i];
    struct sockaddr_storage to;
    socklen_t tlen;
    target(&raddr[p->to], family_of[p->from], &to, &tlen);
    fill(buf, p->len, p->seed);
    SETUP(sendto(s[p->from], buf, p->len, 0, (struct sockaddr *)&to, tlen) == (ssize_t)p->len, "sendto %zu", i);
  }
  /* rc: connected to s0 after s1's datagram arrived. */
  SETUP(connect(r[3], (struct sockaddr *)&sender_addr[0], sender_len[0]) == 0, "connect");
  struct sockaddr_storage to;
  socklen_t tlen;
  target(&raddr[3], AF_INET, &to, &tlen);
  fill(buf, 15, 14);
  SETUP(sendto(s[0], buf, 15, 0, (struct sockaddr *)&to, tlen) == 15, "sendto rc");
  usleep(50000);
  /* rp: the program's own peek offset, past its first datagram (11 bytes). */
  int zero = 0;
  SETUP(setsockopt(r[2], SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero)) == 0, "SO_PEEK_OFF");
  SETUP(recv(r[2], buf, sizeof(buf), MSG_PEEK) == 11, "peek");
  int off = -1;
  socklen_t olen = sizeof(off);
  getsockopt(r[2], SOL_SOCKET, SO_PEEK_OFF, &off, &olen);
  SETUP(off == 11, "peek offset %d", off);
  READY();
  wait_for_trigger();

  off = -1;
  getsockopt(r[2], SOL_SOCKET, SO_PEEK_OFF, &off, &olen);
  CHECK(off == 11, "SO_PEEK_OFF is %d, was 11", off);
  CHECK(recv(r[2], buf, sizeof(buf), MSG_PEEK) == 12, "the peek offset does not reach the second datagram");
  off = -1;
  setsockopt(r[2], SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off));

  static const struct sent rc_plan[] = {{3, 1, 14, 13}, {3, 0, 15, 14}};
  for (int rx = 0; rx < 4; rx++) {
    for (size_t i = 0; i < nplan + 2; i++) {
      const struct sent *p = i < nplan ? &plan[i] : &rc_plan[i - nplan];
      if (p->to != rx || (rx == 3 && i < nplan)) continue;
      struct sockaddr_storage from;
      socklen_t flen = sizeof(from);
      ssize_t n = recvfrom(r[rx], buf, sizeof(buf), MSG_DONTWAIT | MSG_TRUNC, (struct sockaddr *)&from, &flen);
      fill(want, p->len, p->seed);
      CHECK(n == (ssize_t)p->len, "receiver %d datagram %zu: %zd bytes, want %zu", rx, i, n, p->len);
      CHECK(n != (ssize_t)p->len || memcmp(buf, want, p->len) == 0, "receiver %d datagram %zu damaged", rx, i);
      CHECK(n < 0 || same_source(&from, &sender_addr[p->from]), "receiver %d datagram %zu: wrong source", rx, i);
    }
    CHECK(recv(r[rx], buf, sizeof(buf), MSG_DONTWAIT) < 0 && errno == EAGAIN, "receiver %d: more datagrams", rx);
  }
  /* Still flowing, and rc still only hears s0. */
  for (int rx = 0; rx < 3; rx++) {
    target(&raddr[rx], AF_INET6 == raddr[rx].ss_family ? AF_INET6 : AF_INET, &to, &tlen);
    CHECK(sendto(s[rx == 0 ? 0 : 2], "new", 3, 0, (struct sockaddr *)&to, tlen) == 3, "send new %d", rx);
    struct pollfd p = {r[rx], POLLIN, 0};
    CHECK(poll(&p, 1, 2000) == 1 && recv(r[rx], buf, sizeof(buf), 0) == 3, "receiver %d: no new datagram", rx);
  }
  target(&raddr[3], AF_INET, &to, &tlen);
  CHECK(sendto(s[1], "no", 2, 0, (struct sockaddr *)&to, tlen) == 2, "send");
  usleep(20000);
  CHECK(recv(r[3], buf, sizeof(buf), MSG_DONTWAIT) < 0, "the connected socket heard another source");
  return FINISH();
}
