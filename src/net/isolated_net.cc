#include "net/isolated_net.h"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <linux/neighbour.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <thread>

#include "sys/netns.h"

namespace stasis::net {
namespace {

uint32_t Mask(int prefix) { return prefix == 0 ? 0 : htonl(~0u << (32 - prefix)); }

// 02:53 ('S', locally administered, unicast), then a tag and the address.
sys::Mac DerivedMac(uint8_t tag, uint32_t addr) {
  const uint8_t* a = reinterpret_cast<const uint8_t*>(&addr);
  return {0x02, tag, a[0], a[1], a[2], a[3]};
}

sys::Mac BridgeMac(const std::string& name) {
  uint32_t h = 2166136261u;  // FNV-1a of the name
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 16777619u;
  return DerivedMac(0x42, h);
}

Status ConfigureInside(int netns_fd, const NetConfig& c) {
  sys::ScopedNetns inside = STASIS_TRY(sys::ScopedNetns::Enter(netns_fd));
  sys::Rtnl rtnl = STASIS_TRY(sys::Rtnl::Open());
  sys::NlMessage lo = sys::BuildSetUp(STASIS_TRY(rtnl.IndexOf("lo")), true);
  STASIS_TRY(rtnl.Request(lo, "bring up lo in the session"));
  int eth = STASIS_TRY(rtnl.IndexOf(kSessionLink));
  sys::NlMessage addr = sys::BuildNewAddr4(eth, c.address, c.prefix);
  STASIS_TRY(rtnl.Request(addr, "add " + FormatCidr(c.address, c.prefix) + " to the session"));
  sys::NlMessage up = sys::BuildSetUp(eth, true);
  STASIS_TRY(rtnl.Request(up, "bring up the session's eth0"));
  if (c.gateway != 0) {
    sys::NlMessage route = sys::BuildDefaultRoute4(eth, c.gateway);
    STASIS_TRY(rtnl.Request(route, "default route via " + FormatIp4(c.gateway)));
  }
  return inside.Leave();
}

// The gateway a new bridge gets: the subnet's first host, or its last when
// the session holds the first.
uint32_t DefaultGateway(const NetConfig& c) {
  uint32_t net = ntohl(c.address & Mask(c.prefix));
  uint32_t first = net + 1, last = (net | ~ntohl(Mask(c.prefix))) - 1;
  return htonl(htonl(first) == c.address ? last : first);
}

// The bridge's index, created (with the gateway address, up) if missing.
Result<int> EnsureBridge(sys::Rtnl& host, NetConfig* c) {
  Result<int> found = host.IndexOf(c->bridge);
  if (found.ok()) {
    if (c->gateway == 0) {
      for (auto [addr, prefix] : STASIS_TRY(host.Addresses4(*found))) {
        if ((addr & Mask(c->prefix)) == (c->address & Mask(c->prefix)) && addr != c->address) {
          c->gateway = addr;
          break;
        }
      }
    }
    return found;
  }
  if (found.error().code() != ErrorCode::kNotFound) return std::move(found).error();
  sys::NlMessage create = sys::BuildNewBridge(c->bridge, BridgeMac(c->bridge));
  Status made = host.Request(create, "create bridge " + c->bridge);
  // Another session may have made it meanwhile.
  if (!made.ok() && made.error().errnum() != EEXIST) return std::move(made).error();
  int index = STASIS_TRY(host.IndexOf(c->bridge));
  if (made.ok()) {
    if (c->gateway == 0) c->gateway = DefaultGateway(*c);
    sys::NlMessage addr = sys::BuildNewAddr4(index, c->gateway, c->prefix);
    STASIS_TRY(host.Request(addr, "add gateway address to bridge " + c->bridge));
    sys::NlMessage up = sys::BuildSetUp(index, true);
    STASIS_TRY(host.Request(up, "bring up bridge " + c->bridge));
  }
  return index;
}

}  // namespace

std::string FormatIp4(uint32_t addr) {
  char buf[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &addr, buf, sizeof(buf));
  return buf;
}

Result<uint32_t> ParseIp4(const std::string& text) {
  in_addr a;
  if (inet_pton(AF_INET, text.c_str(), &a) != 1) {
    return Error::Invalid(fmt::format("'{}' is not an IPv4 address", text));
  }
  return a.s_addr;
}

std::string FormatMac(const sys::Mac& m) {
  return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4],
                     m[5]);
}

Result<sys::Mac> ParseMac(const std::string& text) {
  sys::Mac m;
  unsigned v[6];
  char tail;
  if (sscanf(text.c_str(), "%x:%x:%x:%x:%x:%x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
             &tail) != 6 ||
      std::any_of(v, v + 6, [](unsigned x) { return x > 255; })) {
    return Error::Invalid(fmt::format("'{}' is not a MAC address", text));
  }
  for (int i = 0; i < 6; ++i) m[i] = static_cast<uint8_t>(v[i]);
  return m;
}

std::string FormatCidr(uint32_t addr, int prefix) {
  return fmt::format("{}/{}", FormatIp4(addr), prefix);
}

Result<std::pair<uint32_t, int>> ParseCidr(const std::string& text) {
  size_t slash = text.find('/');
  if (slash == std::string::npos) {
    return Error::Invalid(fmt::format("address '{}': give ADDR/PREFIX, e.g. 10.83.0.2/16", text));
  }
  uint32_t addr = STASIS_TRY(ParseIp4(text.substr(0, slash)));
  std::string p = text.substr(slash + 1);
  char* end = nullptr;
  long prefix = strtol(p.c_str(), &end, 10);
  if (p.empty() || *end != '\0' || prefix < 1 || prefix > 30) {
    return Error::Invalid(fmt::format("address '{}': prefix length must be 1 to 30", text));
  }
  uint32_t host = addr & ~Mask(static_cast<int>(prefix));
  if (host == 0 || host == ~Mask(static_cast<int>(prefix))) {
    return Error::Invalid(fmt::format("address '{}' is its subnet's network or broadcast", text));
  }
  return std::make_pair(addr, static_cast<int>(prefix));
}

Result<NetConfig> PlanNet(const std::string& cidr, const std::string& bridge,
                          const std::vector<uint32_t>& taken) {
  NetConfig c;
  c.bridge = bridge.empty() ? kDefaultBridge : bridge;
  if (c.bridge.size() >= 16) return Error::Invalid("bridge name longer than 15 characters");
  if (!cidr.empty()) {
    std::tie(c.address, c.prefix) = STASIS_TRY(ParseCidr(cidr));
  } else {
    c.prefix = kDefaultPrefix;
    uint32_t base = ntohl(STASIS_TRY(ParseIp4(kDefaultNetwork)));
    // .1 is the gateway of a bridge stasis makes.
    for (uint32_t host = 2; host < (1u << (32 - c.prefix)) - 1; ++host) {
      uint32_t a = htonl(base + host);
      if (std::find(taken.begin(), taken.end(), a) == taken.end()) {
        c.address = a;
        break;
      }
    }
    if (c.address == 0) return Error::Invalid(fmt::format("no free address in {}", kDefaultSubnet));
  }
  c.mac = DerivedMac(0x53, c.address);
  c.host_mac = DerivedMac(0x48, c.address);
  c.host_link = fmt::format("st{:08x}", ntohl(c.address));
  return c;
}

Result<IsolatedNet> IsolatedNet::Create(NetConfig* config, bool host_up) {
  sys::Rtnl host = STASIS_TRY(sys::Rtnl::Open());
  int bridge = STASIS_TRY(EnsureBridge(host, config));
  sys::UniqueFd netns = STASIS_TRY(sys::CreateNetns());
  sys::VethSpec veth = {config->host_link, config->host_mac, bridge,
                        kSessionLink,      config->mac,      netns.get()};
  sys::NlMessage create = sys::BuildNewVeth(veth);
  Status made = host.Request(create, "create veth " + config->host_link);
  if (!made.ok() && made.error().errnum() == EEXIST) {
    return Error::Invalid(
        fmt::format("address {} is in use: network link {} exists (is a session with this address "
                    "still running?)",
                    FormatIp4(config->address), config->host_link));
  }
  STASIS_TRY(std::move(made));
  int index = STASIS_TRY(host.IndexOf(config->host_link));
  IsolatedNet net(std::move(host), std::move(netns), index);
  STASIS_TRY_CTX(ConfigureInside(net.netns_fd(), *config), "session network");
  if (host_up) STASIS_TRY(net.SetHostUp(true));
  return net;
}

IsolatedNet::~IsolatedNet() {
  if (committed_ || host_index_ == 0) return;
  // Deleting one end deletes the pair.
  sys::NlMessage del = sys::BuildDelLink(host_index_);
  (void)host_.Request(del, "delete veth");
}

Status IsolatedNet::SetHostUp(bool up) {
  sys::NlMessage m = sys::BuildSetUp(host_index_, up);
  return host_.Request(m, up ? "bring up the session link" : "take down the session link");
}

Status SetHostLinkUp(const std::string& host_link, bool up) {
  sys::Rtnl host = STASIS_TRY(sys::Rtnl::Open());
  int index = STASIS_TRY(host.IndexOf(host_link));
  sys::NlMessage m = sys::BuildSetUp(index, up);
  return host.Request(m, fmt::format("{} the session link {}",
                                     up ? "bring up" : "take down (network lock)", host_link));
}

Status DeleteHostLink(const std::string& host_link) {
  sys::Rtnl host = STASIS_TRY(sys::Rtnl::Open());
  Result<int> index = host.IndexOf(host_link);
  if (!index.ok() && index.error().code() == ErrorCode::kNotFound) return Ok();
  sys::NlMessage del = sys::BuildDelLink(STASIS_TRY(std::move(index)));
  Status deleted = host.Request(del, "delete the session link " + host_link);
  if (!deleted.ok() && deleted.error().errnum() == ENODEV) return Ok();
  return deleted;
}

bool CarriedNeighbour(const sys::Neighbour& n) {
  constexpr uint16_t kUsable = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT;
  return !n.lladdr.empty() && (n.state & kUsable) != 0;
}

sys::Neighbour RestoredNeighbour(const sys::Neighbour& dumped) {
  sys::Neighbour n = dumped;
  n.state = (dumped.state & NUD_PERMANENT) ? NUD_PERMANENT : NUD_STALE;
  n.flags = dumped.flags & NTF_ROUTER;
  return n;
}

Result<std::vector<sys::Neighbour>> ReadSessionNeighbours() {
  sys::Rtnl rtnl = STASIS_TRY(sys::Rtnl::Open());
  int eth = STASIS_TRY(rtnl.IndexOf(kSessionLink));
  std::vector<sys::Neighbour> all =
      STASIS_TRY_CTX(rtnl.Neighbours(eth), "read the neighbour cache");
  std::vector<sys::Neighbour> carried;
  for (sys::Neighbour& n : all) {
    if (CarriedNeighbour(n)) carried.push_back(std::move(n));
  }
  return carried;
}

Status AddSessionNeighbours(const std::vector<sys::Neighbour>& carried) {
  if (carried.empty()) return Ok();
  sys::Rtnl rtnl = STASIS_TRY(sys::Rtnl::Open());
  int eth = STASIS_TRY(rtnl.IndexOf(kSessionLink));
  for (const sys::Neighbour& n : carried) {
    sys::NlMessage add = sys::BuildNewNeigh(eth, RestoredNeighbour(n));
    STASIS_TRY(
        rtnl.Request(add, "add neighbour entry " + sys::FormatNeighbour(n) + " to the session"));
  }
  return Ok();
}

bool WaitNeighboursEvicted(const std::vector<sys::Neighbour>& carried,
                           std::chrono::milliseconds timeout) {
  auto same = [](const sys::Neighbour& a, const sys::Neighbour& b) {
    return a.family == b.family && a.dst == b.dst;
  };
  auto deadline = std::chrono::steady_clock::now() + timeout;
  Result<sys::Rtnl> rtnl = sys::Rtnl::Open();
  Result<int> eth = rtnl.ok() ? rtnl->IndexOf(kSessionLink) : Result<int>(Error::NotFound("eth0"));
  while (eth.ok()) {
    Result<std::vector<sys::Neighbour>> now = rtnl->Neighbours(*eth);
    if (!now.ok()) return false;
    bool left = std::any_of(now->begin(), now->end(), [&](const sys::Neighbour& n) {
      return CarriedNeighbour(n) && !(n.state & NUD_PERMANENT) &&
             std::any_of(carried.begin(), carried.end(),
                         [&](const sys::Neighbour& c) { return same(c, n); });
    });
    if (!left) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return false;
}

namespace {

std::string ReadSysfs(const std::string& path) {
  std::ifstream in(path);
  std::string value;
  std::getline(in, value);
  return value;
}

}  // namespace

// IFF_RUNNING of `name` in the calling thread's network namespace.
bool Running(const char* name) {
  sys::UniqueFd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  struct ifreq ifr = {};
  std::snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", name);
  return s.valid() && ioctl(s.get(), SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_RUNNING);
}

bool WaitLinkForwarding(const std::string& host_link, std::chrono::milliseconds timeout) {
  std::string dir = "/sys/class/net/" + host_link;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::string bridge_state = ReadSysfs(dir + "/brport/state");  // 3: BR_STATE_FORWARDING
    if (ReadSysfs(dir + "/operstate") == "up" && (bridge_state.empty() || bridge_state == "3") &&
        Running("eth0")) {
      return true;
    }
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

bool WaitLinkGone(const std::string& host_link, std::chrono::milliseconds timeout) {
  Result<sys::Rtnl> host = sys::Rtnl::Open();
  if (!host.ok()) return false;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    Result<int> index = host->IndexOf(host_link);
    if (!index.ok() && index.error().code() == ErrorCode::kNotFound) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace stasis::net
