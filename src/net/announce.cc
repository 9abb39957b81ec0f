#include "net/announce.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <net/if.h>
#include <netinet/if_ether.h>
#include <netpacket/packet.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "net/isolated_net.h"
#include "sys/netns.h"
#include "sys/unique_fd.h"

namespace stasis::net {
namespace {

// A packet socket made inside the namespace stays bound to it, wherever the
// thread that uses it is.
struct LinkSocket {
  sys::UniqueFd fd;
  int ifindex = 0;
  sys::Mac mac = {};
};

Result<LinkSocket> OpenLink(const std::string& link) {
  LinkSocket s;
  // Protocol 0: the socket sends and receives nothing.
  s.fd.reset(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0));
  if (!s.fd.valid()) return Error::Errno("socket(AF_PACKET)");
  ifreq ifr = {};
  if (link.size() >= sizeof(ifr.ifr_name)) return Error::Invalid("link name too long: " + link);
  std::memcpy(ifr.ifr_name, link.c_str(), link.size() + 1);
  if (ioctl(s.fd.get(), SIOCGIFINDEX, &ifr) < 0) return Error::Errno("SIOCGIFINDEX " + link);
  s.ifindex = ifr.ifr_ifindex;
  if (ioctl(s.fd.get(), SIOCGIFHWADDR, &ifr) < 0) return Error::Errno("SIOCGIFHWADDR " + link);
  std::memcpy(s.mac.data(), ifr.ifr_hwaddr.sa_data, s.mac.size());
  return s;
}

Status SendFrame(int fd, int ifindex, const ArpFrame& frame) {
  sockaddr_ll to = {};
  to.sll_family = AF_PACKET;
  to.sll_protocol = htons(ETH_P_ARP);
  to.sll_ifindex = ifindex;
  to.sll_halen = ETH_ALEN;
  std::memset(to.sll_addr, 0xff, ETH_ALEN);
  ssize_t n =
      sendto(fd, frame.data(), frame.size(), 0, reinterpret_cast<const sockaddr*>(&to), sizeof(to));
  if (n < 0) return Error::Errno("send gratuitous ARP");
  return Ok();
}

Status AwaitCarrier(int fd, const std::string& link) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  for (;;) {
    ifreq ifr = {};
    std::memcpy(ifr.ifr_name, link.c_str(), link.size() + 1);
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) return Error::Errno("SIOCGIFFLAGS " + link);
    if (ifr.ifr_flags & IFF_RUNNING) return Ok();
    if (std::chrono::steady_clock::now() > deadline) {
      return Error(ErrorCode::kFailed, link + " has no carrier 500 ms after it came up");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

}  // namespace

ArpFrame GratuitousArp(uint32_t address, const sys::Mac& mac) {
  ArpFrame f = {};
  ether_header eth = {};
  std::memset(eth.ether_dhost, 0xff, ETH_ALEN);
  std::memcpy(eth.ether_shost, mac.data(), ETH_ALEN);
  eth.ether_type = htons(ETHERTYPE_ARP);
  ether_arp arp = {};
  arp.arp_hrd = htons(ARPHRD_ETHER);
  arp.arp_pro = htons(ETHERTYPE_IP);
  arp.arp_hln = ETH_ALEN;
  arp.arp_pln = 4;
  arp.arp_op = htons(ARPOP_REQUEST);
  std::memcpy(arp.arp_sha, mac.data(), ETH_ALEN);
  std::memcpy(arp.arp_spa, &address, 4);
  std::memcpy(arp.arp_tpa, &address, 4);  // arp_tha stays zero
  std::memcpy(f.data(), &eth, sizeof(eth));
  std::memcpy(f.data() + sizeof(eth), &arp, sizeof(arp));
  return f;
}

Status Announce(int netns_fd, const std::string& link, uint32_t address, int count) {
  std::string what = fmt::format("announce {} on {}", FormatIp4(address), link);
  sys::ScopedNetns inside = STASIS_TRY_CTX(sys::ScopedNetns::Enter(netns_fd), what);
  Result<LinkSocket> opened = OpenLink(link);
  STASIS_TRY_CTX(inside.Leave(), what);
  LinkSocket s = STASIS_TRY_CTX(std::move(opened), what);
  // A frame sent before the veth has carrier is dropped, and one lost
  // announce leaves the fabric's bridges forwarding the session's MAC to its
  // old machine until their entries age out (minutes): wait for carrier
  // (IFF_RUNNING), then space the announces a little.
  STASIS_TRY_CTX(AwaitCarrier(s.fd.get(), link), what);
  ArpFrame frame = GratuitousArp(address, s.mac);
  for (int i = 0; i < count; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    STASIS_TRY_CTX(SendFrame(s.fd.get(), s.ifindex, frame), what);
  }
  return Ok();
}

}  // namespace stasis::net
