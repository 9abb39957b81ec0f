/* UDP sockets: an IPv4 socket bound to a loopback port, another connected to
 * it, an IPv6 socket bound to ::1 with SO_REUSEADDR and O_NONBLOCK, and an
 * unbound one with SO_BROADCAST. After restore: same addresses and peers,
 * options and flags, and datagrams still flow with the right source.
 */
// Cases (the format is in CMakeLists.txt):
// UDP: bound, connected, IPv6, broadcast; addresses, options and flags.
// stasis-case: program.udp SERIAL ${PROGRAM}
#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static int port_of(int fd, int peer) {
  struct sockaddr_storage a;
  socklen_t len = sizeof(a);
  if ((peer ? getpeername : getsockname)(fd, (struct sockaddr *)&a, &len) < 0) return -1;
  return ntohs(a.ss_family == AF_INET ? ((struct sockaddr_in *)&a)->sin_port : ((struct sockaddr_in6 *)&a)->sin6_port);
}

int main(void) {
  install_trigger(0);
  int server = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(a);
  SETUP(bind(server, (struct sockaddr *)&a, sizeof(a)) == 0, "bind");
  getsockname(server, (struct sockaddr *)&a, &len);
  int client = socket(AF_INET, SOCK_DGRAM, 0);
  SETUP(connect(client, (struct sockaddr *)&a, len) == 0, "connect");
  int six = socket(AF_INET6, SOCK_DGRAM, 0);
  int one = 1;
  setsockopt(six, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
  SETUP(bind(six, (struct sockaddr *)&a6, sizeof(a6)) == 0, "bind6");
  fcntl(six, F_SETFL, O_NONBLOCK);
  int bcast = socket(AF_INET, SOCK_DGRAM, 0);
  setsockopt(bcast, SOL_SOCKET, SO_BROADCAST, &one, sizeof(one));
  int ports[4] = {port_of(server, 0), port_of(client, 0), port_of(client, 1), port_of(six, 0)};
  READY();
  wait_for_trigger();

  int now[4] = {port_of(server, 0), port_of(client, 0), port_of(client, 1), port_of(six, 0)};
  CHECK(memcmp(now, ports, sizeof(now)) == 0, "ports changed: %d %d %d %d", now[0], now[1], now[2], now[3]);
  CHECK(send(client, "ping", 4, 0) == 4, "send on the connected socket");
  char buf[16];
  struct sockaddr_in from;
  socklen_t flen = sizeof(from);
  CHECK(recvfrom(server, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen) == 4 && memcmp(buf, "ping", 4) == 0,
        "the bound socket did not get the datagram");
  CHECK(ntohs(from.sin_port) == ports[1], "datagram from port %d, expected %d", ntohs(from.sin_port), ports[1]);
  int v = 0;
  socklen_t vl = sizeof(v);
  getsockopt(six, SOL_SOCKET, SO_REUSEADDR, &v, &vl);
  CHECK(v == 1, "SO_REUSEADDR lost");
  CHECK(fcntl(six, F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
  getsockopt(bcast, SOL_SOCKET, SO_BROADCAST, &v, &vl);
  CHECK(v == 1, "SO_BROADCAST lost");
  return FINISH();
}
