/* 100 established loopback connections (accepted from one listener) with
 * data in flight both ways on every one, each with its own pattern. After
 * restore every byte arrives on the right connection, in order, and every
 * connection still talks.
 */
// Cases (the format is in CMakeLists.txt):
// 100 established loopback connections, data in flight both ways on each.
// stasis-case: program.tcp_many SERIAL ${PROGRAM}
#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#define N 100
#define LEN 3000

static int clients[N], servers[N];

static int read_exact(int fd, unsigned char *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 0;
    got += (size_t)r;
  }
  return 1;
}

int main(void) {
  install_trigger(0);
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(a);
  SETUP(bind(l, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(l, N) == 0, "listen");
  getsockname(l, (struct sockaddr *)&a, &len);
  static unsigned char buf[LEN];
  for (int i = 0; i < N; i++) {
    clients[i] = socket(AF_INET, SOCK_STREAM, 0);
    SETUP(connect(clients[i], (struct sockaddr *)&a, len) == 0, "connect %d", i);
    servers[i] = accept(l, NULL, NULL);
    SETUP(servers[i] >= 0, "accept %d", i);
    fill(buf, LEN, 1000 + i);
    SETUP(write(clients[i], buf, LEN) == LEN, "write");
    fill(buf, LEN, 2000 + i);
    SETUP(write(servers[i], buf, LEN) == LEN, "write");
  }
  usleep(100000);
  READY();
  wait_for_trigger();

  for (int i = 0; i < N; i++) {
    CHECK(read_exact(servers[i], buf, LEN) && mismatch(buf, LEN, 1000 + i) < 0, "connection %d: client->server data wrong", i);
    CHECK(read_exact(clients[i], buf, LEN) && mismatch(buf, LEN, 2000 + i) < 0, "connection %d: server->client data wrong", i);
    unsigned char c = (unsigned char)i;
    CHECK(write(clients[i], &c, 1) == 1 && read_exact(servers[i], buf, 1) && buf[0] == c, "connection %d no longer talks", i);
  }
  return FINISH();
}
