#include "net/session_image.h"

#include <fmt/format.h>
#include <sys/socket.h>

#include <algorithm>

namespace stasis::net {
namespace {

constexpr size_t kMaxLinkAddress = 32;  // the kernel's MAX_ADDR_LEN

Result<sys::Mac> MacFrom(const std::string& bytes, const char* what) {
  if (bytes.size() != 6) return Error::Corrupt(std::string("session network: bad ") + what);
  sys::Mac mac;
  std::copy(bytes.begin(), bytes.end(), mac.begin());
  return mac;
}

}  // namespace

void NetToProto(const NetConfig& net, image::SessionNet* out) {
  out->set_address(net.address);
  out->set_prefix(static_cast<uint32_t>(net.prefix));
  out->set_gateway(net.gateway);
  out->set_bridge(net.bridge);
  out->set_mac(std::string(net.mac.begin(), net.mac.end()));
  out->set_host_mac(std::string(net.host_mac.begin(), net.host_mac.end()));
  out->set_host_link(net.host_link);
}

Result<NetConfig> NetFromProto(const image::SessionNet& in) {
  NetConfig net;
  net.address = in.address();
  net.prefix = static_cast<int>(in.prefix());
  net.gateway = in.gateway();
  net.bridge = in.bridge();
  net.mac = STASIS_TRY(MacFrom(in.mac(), "mac"));
  net.host_mac = STASIS_TRY(MacFrom(in.host_mac(), "host mac"));
  net.host_link = in.host_link();
  if (net.address == 0 || net.prefix < 1 || net.prefix > 30 || net.bridge.empty() ||
      net.bridge.size() > 15 || net.host_link.empty() || net.host_link.size() > 15) {
    return Error::Corrupt("session network: bad address, bridge or link name");
  }
  return net;
}

void NeighboursToProto(const std::vector<sys::Neighbour>& in, image::SessionNet* out) {
  out->clear_neighbours();
  for (const sys::Neighbour& n : in) {
    image::Neighbour* p = out->add_neighbours();
    p->set_family(n.family);
    p->set_address(std::string(n.dst.begin(), n.dst.end()));
    p->set_lladdr(std::string(n.lladdr.begin(), n.lladdr.end()));
    p->set_state(n.state);
    p->set_flags(n.flags);
  }
}

Result<std::vector<sys::Neighbour>> NeighboursFromProto(const image::SessionNet& in) {
  std::vector<sys::Neighbour> out;
  for (const image::Neighbour& p : in.neighbours()) {
    sys::Neighbour n;
    n.family = static_cast<uint8_t>(p.family());
    n.dst.assign(p.address().begin(), p.address().end());
    n.lladdr.assign(p.lladdr().begin(), p.lladdr().end());
    n.state = static_cast<uint16_t>(p.state());
    n.flags = static_cast<uint8_t>(p.flags());
    bool address_ok = (p.family() == AF_INET && n.dst.size() == 4) ||
                      (p.family() == AF_INET6 && n.dst.size() == 16);
    if (!address_ok || n.lladdr.size() > kMaxLinkAddress || p.state() > 0xffff ||
        p.flags() > 0xff || !CarriedNeighbour(n)) {
      return Error::Corrupt(
          fmt::format("session network: bad neighbour entry {}", sys::FormatNeighbour(n)));
    }
    out.push_back(std::move(n));
  }
  return out;
}

}  // namespace stasis::net
