#include "image/session_net.h"

#include <algorithm>

namespace stasis::image {
namespace {

Result<sys::Mac> MacFrom(const std::string& bytes, const char* what) {
  if (bytes.size() != 6) return Error::Corrupt(std::string("session network: bad ") + what);
  sys::Mac mac;
  std::copy(bytes.begin(), bytes.end(), mac.begin());
  return mac;
}

}  // namespace

void NetToProto(const sys::NetConfig& net, SessionNet* out) {
  out->set_address(net.address);
  out->set_prefix(static_cast<uint32_t>(net.prefix));
  out->set_gateway(net.gateway);
  out->set_bridge(net.bridge);
  out->set_mac(std::string(net.mac.begin(), net.mac.end()));
  out->set_host_mac(std::string(net.host_mac.begin(), net.host_mac.end()));
  out->set_host_link(net.host_link);
}

Result<sys::NetConfig> NetFromProto(const SessionNet& in) {
  sys::NetConfig net;
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

}  // namespace stasis::image
