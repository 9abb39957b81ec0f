/* refuse_socket: holds a UDP socket with a datagram queued and an error
 * pending (IP_RECVERR, an ICMP port unreachable), which the engine refuses:
 * the error cannot be read without taking it from the program.
 *
 * The dump must fail, naming pid, fd 7 and "socket", and leave the process
 * untouched: after the trigger the socket still works, no tracer is left,
 * and the memory layout, fds and signal mask are what they were.
 */
// Cases (the format is in CMakeLists.txt):
// The socket is fd 7; the error must name the pid, the fd and the kind.
// stasis-case: program.refuse_socket ${PROGRAM} --expect-dump-failure [=[(?is)^(?=.*\b{pid}\b)(?=.*\bfd\W{0,3}7\b)(?=.*socket)]=]
// stasis-selftest: selftest.refuse_socket ${PROGRAM}
#include "common.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#define SOCK_FD 7 /* fixed, so the runner can look for it in the error */

static char raw[256 << 10], maps_before[64 << 10], maps_after[64 << 10];

int main(void) {
  install_trigger(SA_RESTART);
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  SETUP(s >= 0, "socket");
  SETUP(dup2(s, SOCK_FD) == SOCK_FD, "dup2");
  if (s != SOCK_FD)
    close(s);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  SETUP(bind(SOCK_FD, (struct sockaddr *)&addr, sizeof addr) == 0, "bind");
  socklen_t len = sizeof addr;
  SETUP(getsockname(SOCK_FD, (struct sockaddr *)&addr, &len) == 0, "getsockname");
  SETUP(sendto(SOCK_FD, "queued", 6, 0, (struct sockaddr *)&addr, sizeof addr) == 6, "sendto");
  int one = 1;
  SETUP(setsockopt(SOCK_FD, IPPROTO_IP, IP_RECVERR, &one, sizeof one) == 0, "IP_RECVERR");
  struct sockaddr_in closed = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int tmp = socket(AF_INET, SOCK_DGRAM, 0);
  SETUP(bind(tmp, (struct sockaddr *)&closed, sizeof closed) == 0, "bind");
  len = sizeof closed;
  SETUP(getsockname(tmp, (struct sockaddr *)&closed, &len) == 0, "getsockname");
  close(tmp); /* nobody listens there now */
  SETUP(sendto(SOCK_FD, "x", 1, 0, (struct sockaddr *)&closed, sizeof closed) == 1, "sendto");
  usleep(20000);
  struct pollfd p = {SOCK_FD, POLLIN, 0};
  SETUP(poll(&p, 1, 0) == 1 && (p.revents & POLLERR), "no error pending");
  struct timeval tv = {2, 0};
  setsockopt(SOCK_FD, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  int nfds = fd_count();
  sigset_t mask_before, mask_after;
  sigprocmask(SIG_BLOCK, NULL, &mask_before);
  grow_stack(256 << 10);
  SETUP(read_text("/proc/self/maps", raw, sizeof raw) > 0, "read maps");
  normalize_maps(raw, maps_before, sizeof maps_before);

  READY();
  wait_for_trigger();

  /* Nothing injected was left behind (parasite code, fds, tracer). */
  CHECK(read_text("/proc/self/maps", raw, sizeof raw) > 0, "read maps");
  normalize_maps(raw, maps_after, sizeof maps_after);
  if (strcmp(maps_before, maps_after) != 0) {
    char diff[400];
    first_diff_line(maps_before, maps_after, diff, sizeof diff);
    CHECK(0, "/proc/self/maps changed by the failed dump: %s", diff);
  }
  CHECK(fd_count() == nfds, "%d fds open, %d before the dump", fd_count(), nfds);
  sigprocmask(SIG_BLOCK, NULL, &mask_after);
  for (int sig = 1; sig <= 64; sig++)
    CHECK(sigismember(&mask_before, sig) == sigismember(&mask_after, sig), "signal %d blocked state changed", sig);
  static char status[16 << 10];
  read_text("/proc/self/status", status, sizeof status);
  const char *tracer = status_field(status, "TracerPid");
  CHECK(tracer && atoi(tracer) == 0, "still traced: TracerPid %d", tracer ? atoi(tracer) : -1);

  /* The error is still pending, the queued datagram still there, and the
   * socket still works. */
  int err = 0;
  len = sizeof err;
  CHECK(getsockopt(SOCK_FD, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == ECONNREFUSED, "SO_ERROR %d", err);
  char ebuf[64];
  CHECK(recv(SOCK_FD, ebuf, sizeof ebuf, MSG_ERRQUEUE) >= 0, "the error queue is empty");
  char queued[16];
  CHECK(recv(SOCK_FD, queued, sizeof queued, 0) == 6 && memcmp(queued, "queued", 6) == 0, "the queued datagram is gone");
  struct sockaddr_in now;
  len = sizeof now;
  CHECK(getsockname(SOCK_FD, (struct sockaddr *)&now, &len) == 0 && now.sin_port == addr.sin_port,
        "socket address changed");
  CHECK(sendto(SOCK_FD, "hello", 5, 0, (struct sockaddr *)&addr, sizeof addr) == 5, "sendto: %s", strerror(errno));
  char buf[16];
  ssize_t r = recv(SOCK_FD, buf, sizeof buf, 0);
  CHECK(r == 5 && memcmp(buf, "hello", 5) == 0, "recv: %zd (%s)", r, r < 0 ? strerror(errno) : "");
  return FINISH();
}
