#include "kinds/udp_socket.h"

#include <fcntl.h>
#include <fmt/format.h>

#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <cstring>

#include "kinds/moving_host.h"
#include "kinds/udp_queue.h"
#include "sys/sockopt.h"

#include "udp_socket.pb.h"

namespace stasis::kinds::udp_socket {
namespace {

bool IsUdp(int fd) {
  sys::SocketKind k;
  return sys::GetSocketKind(fd, &k) && (k.domain == AF_INET || k.domain == AF_INET6) &&
         k.type == SOCK_DGRAM && k.protocol == IPPROTO_UDP;
}

// sockaddr bytes, or empty when there is none (not connected).
std::string Name(int fd, bool peer) {
  sockaddr_storage ss = {};
  socklen_t len = sizeof(ss);
  int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
               : getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  return r < 0 ? std::string() : std::string(reinterpret_cast<const char*>(&ss), len);
}

// `bound` (a socket's own name) receives what is sent to `to`.
bool SameEndpoint(const std::string& bound, const std::string& to) {
  if (bound.empty() || bound.size() != to.size()) return false;
  if (bound == to) return true;
  sockaddr_storage b = {}, t = {};
  std::memcpy(&b, bound.data(), bound.size());
  std::memcpy(&t, to.data(), to.size());
  if (b.ss_family == AF_INET && t.ss_family == AF_INET) {
    auto* bi = reinterpret_cast<const sockaddr_in*>(&b);
    auto* ti = reinterpret_cast<const sockaddr_in*>(&t);
    return bi->sin_port == ti->sin_port && bi->sin_addr.s_addr == htonl(INADDR_ANY) &&
           (ntohl(ti->sin_addr.s_addr) >> 24) == 127;
  }
  if (b.ss_family == AF_INET6 && t.ss_family == AF_INET6) {
    auto* bi = reinterpret_cast<const sockaddr_in6*>(&b);
    auto* ti = reinterpret_cast<const sockaddr_in6*>(&t);
    return bi->sin6_port == ti->sin6_port && IN6_IS_ADDR_UNSPECIFIED(&bi->sin6_addr) &&
           IN6_IS_ADDR_LOOPBACK(&ti->sin6_addr);
  }
  return false;
}

bool HasPort(const std::string& addr) {
  if (addr.size() < sizeof(sockaddr_in)) return false;
  const sockaddr_in* in = reinterpret_cast<const sockaddr_in*>(addr.data());
  return in->sin_port != 0;  // sin6_port sits at the same offset
}

// Whether a datagram sent to `peer` reaches a socket of the tree: one bound
// to that address and port, or to the wildcard address on that port when
// `peer` is a loopback address.
bool PeerInTree(const DumpContext& ctx, const FdDumpInput& in, const std::string& peer) {
  for (const FdDumpInput* other : ctx.inputs) {
    if (other == &in || !S_ISSOCK(other->st.st_mode) || !IsUdp(other->local.get())) continue;
    if (SameEndpoint(Name(other->local.get(), false), peer)) return true;
  }
  return false;
}

}  // namespace

bool Matches(const FdDumpInput& in) { return S_ISSOCK(in.st.st_mode) && IsUdp(in.local.get()); }

Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  int fd = in.local.get();
  // A migration to another machine leaves the host's address behind: a
  // peer outside the tree could not be reached from there.
  std::string peer = Name(fd, true);
  if (ctx.policy.moving_host && !peer.empty() && !PeerInTree(ctx, in, peer)) {
    return OutsidePeerCannotMove("udp", in, Name(fd, false), peer);
  }
  image::UdpSocketState s;
  STASIS_TRY_CTX(udp_queue::Dump(fd, &s), what);
  s.set_family(STASIS_TRY(sys::GetIntOpt(fd, SOL_SOCKET, SO_DOMAIN, "SO_DOMAIN")));
  s.set_local(Name(fd, false));
  s.set_peer(peer);
  s.set_flags(in.info.flags & ~O_CLOEXEC);
  s.set_reuseaddr(STASIS_TRY(sys::GetIntOpt(fd, SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR")));
  s.set_reuseport(STASIS_TRY(sys::GetIntOpt(fd, SOL_SOCKET, SO_REUSEPORT, "SO_REUSEPORT")));
  s.set_broadcast(STASIS_TRY(sys::GetIntOpt(fd, SOL_SOCKET, SO_BROADCAST, "SO_BROADCAST")));
  s.set_rcvbuf(STASIS_TRY(sys::GetIntOpt(fd, SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF")));
  s.set_sndbuf(STASIS_TRY(sys::GetIntOpt(fd, SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF")));
  if (s.family() == AF_INET6) {
    s.set_v6only(STASIS_TRY(sys::GetIntOpt(fd, IPPROTO_IPV6, IPV6_V6ONLY, "IPV6_V6ONLY")));
  }
  file->mutable_state()->PackFrom(s);
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext&, const image::File& file) {
  image::UdpSocketState s;
  if (!file.state().UnpackTo(&s)) return Error::Corrupt("udp state does not parse");
  sys::UniqueFd fd(socket(s.family(), SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDP));
  if (!fd.valid()) return Error::Errno("socket(UDP)");
  int f = fd.get();
  STASIS_TRY(sys::SetIntOpt(f, SOL_SOCKET, SO_REUSEADDR, s.reuseaddr(), "SO_REUSEADDR"));
  STASIS_TRY(sys::SetIntOpt(f, SOL_SOCKET, SO_REUSEPORT, s.reuseport(), "SO_REUSEPORT"));
  STASIS_TRY(sys::SetIntOpt(f, SOL_SOCKET, SO_BROADCAST, s.broadcast(), "SO_BROADCAST"));
  // The kernel reports twice what was set.
  STASIS_TRY(sys::SetIntOpt(f, SOL_SOCKET, SO_RCVBUFFORCE, s.rcvbuf() / 2, "SO_RCVBUFFORCE"));
  STASIS_TRY(sys::SetIntOpt(f, SOL_SOCKET, SO_SNDBUFFORCE, s.sndbuf() / 2, "SO_SNDBUFFORCE"));
  if (s.family() == AF_INET6)
    STASIS_TRY(sys::SetIntOpt(f, IPPROTO_IPV6, IPV6_V6ONLY, s.v6only(), "IPV6_V6ONLY"));
  if (HasPort(s.local()) &&
      bind(f, reinterpret_cast<const sockaddr*>(s.local().data()), s.local().size()) < 0) {
    return Error::Errno("bind UDP socket");
  }
  // Before connect(): the queue may hold datagrams from other sources.
  STASIS_TRY(udp_queue::Restore(f, s));
  if (!s.peer().empty() &&
      connect(f, reinterpret_cast<const sockaddr*>(s.peer().data()), s.peer().size()) < 0) {
    return Error::Errno("connect UDP socket");
  }
  if (fcntl(f, F_SETFL, s.flags() & (O_NONBLOCK | O_ASYNC)) < 0) return Error::Errno("F_SETFL");
  return fd;
}

const FdKind kKind = {
    .name = kName,
    .summary =
        "UDP, IPv4 and IPv6: bound and connected sockets, options, queued datagrams with their "
        "sources",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
};

}  // namespace stasis::kinds::udp_socket
