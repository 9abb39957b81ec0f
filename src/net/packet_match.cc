// The packet keeper's pure parts: which packets it keeps, and how they are
// made whole again before they are sent back.
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

#include "net/packet_keeper.h"

namespace stasis::net {
namespace {

constexpr uint32_t kAccept = 0x40000;  // bytes of the packet to copy: all of it

// A connection's end as the packets carry it: address words and port in
// host order, which is how classic BPF loads them.
struct End {
  bool v4 = false;
  uint32_t words[4] = {};
  uint16_t port = 0;
};

bool ParseEnd(const std::string& raw, End* end) {
  Result<sys::FlowEnd> e = sys::ParseFlowEnd(raw);
  if (!e.ok()) return false;
  end->v4 = e->v4;
  end->port = e->port;
  for (int i = 0; i < (e->v4 ? 1 : 4); i++) {
    const uint8_t* b = e->addr.data() + 4 * i;
    end->words[i] = static_cast<uint32_t>(b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3]);
  }
  return true;
}

sock_filter Stmt(uint16_t code, uint32_t k) { return {code, 0, 0, k}; }
sock_filter Jump(uint16_t code, uint32_t k, uint8_t jt, uint8_t jf) { return {code, jt, jf, k}; }

// Compares, one after another, loads with values; on the first mismatch
// jumps past the block's final `ret accept`.
struct Block {
  std::vector<std::pair<sock_filter, uint32_t>> checks;
  void Check(sock_filter load, uint32_t value) { checks.push_back({load, value}); }
  void AppendTo(std::vector<sock_filter>* prog) const {
    size_t left = checks.size() * 2 + 1;  // instructions of the block still ahead
    for (const auto& [load, value] : checks) {
      prog->push_back(load);
      left -= 2;
      prog->push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, value, 0, static_cast<uint8_t>(left)));
    }
    prog->push_back(Stmt(BPF_RET | BPF_K, kAccept));
  }
};

// Packets from the peer to us: source is the peer, destination is us.
Block FlowBlock(const End& local, const End& peer) {
  Block b;
  if (local.v4) {
    b.Check(Stmt(BPF_LD | BPF_W | BPF_ABS, 12), peer.words[0]);
    b.Check(Stmt(BPF_LD | BPF_W | BPF_ABS, 16), local.words[0]);
    b.Check(Stmt(BPF_LD | BPF_H | BPF_IND, 0), peer.port);  // X: the IPv4 header's length
    b.Check(Stmt(BPF_LD | BPF_H | BPF_IND, 2), local.port);
    return b;
  }
  for (uint32_t i = 0; i < 4; i++)
    b.Check(Stmt(BPF_LD | BPF_W | BPF_ABS, 8 + 4 * i), peer.words[i]);
  for (uint32_t i = 0; i < 4; i++) {
    b.Check(Stmt(BPF_LD | BPF_W | BPF_ABS, 24 + 4 * i), local.words[i]);
  }
  b.Check(Stmt(BPF_LD | BPF_H | BPF_ABS, 40), peer.port);  // TCP right after the fixed header
  b.Check(Stmt(BPF_LD | BPF_H | BPF_ABS, 42), local.port);
  return b;
}

// Instructions ahead of a family's blocks: TCP, else drop (and for IPv4,
// X = header length for the port loads).
void FamilyHead(bool v4, std::vector<sock_filter>* prog) {
  prog->push_back(Stmt(BPF_LD | BPF_B | BPF_ABS, v4 ? 9 : 6));
  prog->push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_TCP, 1, 0));
  prog->push_back(Stmt(BPF_RET | BPF_K, 0));
  if (v4) prog->push_back(Stmt(BPF_LDX | BPF_B | BPF_MSH, 0));
}

uint32_t Sum16(const uint8_t* p, size_t len, uint32_t sum) {
  for (; len > 1; p += 2, len -= 2) sum += static_cast<uint32_t>(p[0] << 8 | p[1]);
  if (len == 1) sum += static_cast<uint32_t>(p[0] << 8);
  return sum;
}

uint16_t Fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum & 0xffff);
}

}  // namespace

std::vector<sock_filter> CaptureFilter(const std::vector<sys::TcpFlow>& flows) {
  std::vector<Block> v4, v6;
  for (const sys::TcpFlow& f : flows) {
    End local, peer;
    if (!ParseEnd(f.local, &local) || !ParseEnd(f.peer, &peer)) continue;
    (local.v4 ? v4 : v6).push_back(FlowBlock(local, peer));
  }
  std::vector<sock_filter> body4, body6;
  FamilyHead(true, &body4);
  for (const Block& b : v4) b.AppendTo(&body4);
  body4.push_back(Stmt(BPF_RET | BPF_K, 0));
  FamilyHead(false, &body6);
  for (const Block& b : v6) b.AppendTo(&body6);
  body6.push_back(Stmt(BPF_RET | BPF_K, 0));
  // Too many flows for one program: every TCP packet of the family, and the
  // keeper's own check (FromPeer) does the rest.
  if (body4.size() + body6.size() + 16 > BPF_MAXINSNS) {
    body4.resize(4);
    body4.push_back(Stmt(BPF_RET | BPF_K, kAccept));
    body6.resize(3);
    body6.push_back(Stmt(BPF_RET | BPF_K, kAccept));
  }
  std::vector<sock_filter> prog;
  // Incoming only: on lo a local peer's packet shows twice, going out first.
  prog.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE));
  prog.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, PACKET_HOST, 1, 0));
  prog.push_back(Stmt(BPF_RET | BPF_K, 0));
  // The IP version, from the packet itself.
  prog.push_back(Stmt(BPF_LD | BPF_B | BPF_ABS, 0));
  prog.push_back(Stmt(BPF_ALU | BPF_RSH | BPF_K, 4));
  prog.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, 1));
  prog.push_back(Stmt(BPF_JMP | BPF_JA, 3));  // to the IPv4 part
  prog.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, 6, 1, 0));
  prog.push_back(Stmt(BPF_RET | BPF_K, 0));
  prog.push_back(Stmt(BPF_JMP | BPF_JA, static_cast<uint32_t>(body4.size())));  // to IPv6
  prog.insert(prog.end(), body4.begin(), body4.end());
  prog.insert(prog.end(), body6.begin(), body6.end());
  return prog;
}

std::vector<sock_filter> LinkCaptureFilter(uint32_t address) {
  return {
      // Not what a device sends: a packet crossing the bridge shows going
      // out of every other port.
      Stmt(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE),
      Jump(BPF_JMP | BPF_JEQ | BPF_K, PACKET_OUTGOING, 0, 1),
      Stmt(BPF_RET | BPF_K, 0),
      Stmt(BPF_LD | BPF_B | BPF_ABS, 0),
      Stmt(BPF_ALU | BPF_RSH | BPF_K, 4),
      Jump(BPF_JMP | BPF_JEQ | BPF_K, 4, 1, 0),
      Stmt(BPF_RET | BPF_K, 0),
      Stmt(BPF_LD | BPF_B | BPF_ABS, 9),
      Jump(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_TCP, 1, 0),
      Stmt(BPF_RET | BPF_K, 0),
      Stmt(BPF_LD | BPF_W | BPF_ABS, 16),
      Jump(BPF_JMP | BPF_JEQ | BPF_K, ntohl(address), 1, 0),
      Stmt(BPF_RET | BPF_K, 0),
      Stmt(BPF_RET | BPF_K, kAccept),
  };
}

bool ToAddress(const std::string& packet, uint32_t address) {
  const auto* p = reinterpret_cast<const uint8_t*>(packet.data());
  return packet.size() >= 40 && p[0] >> 4 == 4 && p[9] == IPPROTO_TCP &&
         std::memcmp(p + 16, &address, 4) == 0;
}

std::vector<std::string> SegmentTcp4(const std::string& packet, size_t mtu) {
  const auto* p = reinterpret_cast<const uint8_t*>(packet.data());
  size_t n = packet.size();
  if (n <= mtu || n < 40 || p[0] >> 4 != 4 || p[9] != IPPROTO_TCP) return {packet};
  size_t ip_len = static_cast<size_t>(p[0] & 0xf) * 4;
  size_t tcp_len = static_cast<size_t>(p[ip_len + 12] >> 4) * 4;
  size_t head = ip_len + tcp_len;
  if (head >= mtu || head > n) return {packet};
  size_t mss = mtu - head;
  uint32_t seq = static_cast<uint32_t>(p[ip_len + 4] << 24 | p[ip_len + 5] << 16 |
                                       p[ip_len + 6] << 8 | p[ip_len + 7]);
  uint16_t id = static_cast<uint16_t>(p[4] << 8 | p[5]);
  uint8_t flags = p[ip_len + 13];
  std::vector<std::string> out;
  for (size_t off = head; off < n; off += mss) {
    size_t len = std::min(mss, n - off);
    std::string seg = packet.substr(0, head) + packet.substr(off, len);
    auto* q = reinterpret_cast<uint8_t*>(seg.data());
    uint16_t total = static_cast<uint16_t>(seg.size());
    q[2] = static_cast<uint8_t>(total >> 8);
    q[3] = static_cast<uint8_t>(total & 0xff);
    q[4] = static_cast<uint8_t>(id >> 8);
    q[5] = static_cast<uint8_t>(id & 0xff);
    id++;
    uint32_t s = seq + static_cast<uint32_t>(off - head);
    for (int i = 0; i < 4; i++) q[ip_len + 4 + i] = static_cast<uint8_t>(s >> (24 - 8 * i));
    bool last = off + len >= n;
    // FIN and PSH belong to the last piece only.
    q[ip_len + 13] = last ? flags : static_cast<uint8_t>(flags & ~(0x01 | 0x08));
    q[10] = q[11] = 0;
    uint16_t check = Fold(Sum16(q, ip_len, 0));
    q[10] = static_cast<uint8_t>(check >> 8);
    q[11] = static_cast<uint8_t>(check & 0xff);
    out.push_back(std::move(seg));
  }
  return out;
}

bool FromPeer(const std::string& packet, const std::vector<sys::TcpFlow>& flows) {
  const auto* p = reinterpret_cast<const uint8_t*>(packet.data());
  size_t n = packet.size();
  if (n < 20) return false;
  End src, dst;
  size_t tcp = 0;
  if (p[0] >> 4 == 4) {
    tcp = static_cast<size_t>(p[0] & 0xf) * 4;
    if (p[9] != IPPROTO_TCP || n < tcp + 4) return false;
    src.v4 = dst.v4 = true;
    src.words[0] = static_cast<uint32_t>(p[12] << 24 | p[13] << 16 | p[14] << 8 | p[15]);
    dst.words[0] = static_cast<uint32_t>(p[16] << 24 | p[17] << 16 | p[18] << 8 | p[19]);
  } else if (p[0] >> 4 == 6) {
    tcp = 40;
    if (n < tcp + 4 || p[6] != IPPROTO_TCP) return false;
    for (int i = 0; i < 4; i++) {
      const uint8_t* s = p + 8 + 4 * i;
      const uint8_t* d = p + 24 + 4 * i;
      src.words[i] = static_cast<uint32_t>(s[0] << 24 | s[1] << 16 | s[2] << 8 | s[3]);
      dst.words[i] = static_cast<uint32_t>(d[0] << 24 | d[1] << 16 | d[2] << 8 | d[3]);
    }
  } else {
    return false;
  }
  src.port = static_cast<uint16_t>(p[tcp] << 8 | p[tcp + 1]);
  dst.port = static_cast<uint16_t>(p[tcp + 2] << 8 | p[tcp + 3]);
  auto same = [](const End& a, const End& b) {
    return a.v4 == b.v4 && a.port == b.port && std::memcmp(a.words, b.words, sizeof(a.words)) == 0;
  };
  for (const sys::TcpFlow& f : flows) {
    End local, peer;
    if (ParseEnd(f.local, &local) && ParseEnd(f.peer, &peer) && same(src, peer) &&
        same(dst, local)) {
      return true;
    }
  }
  return false;
}

bool FixTcpChecksum(std::string* packet) {
  auto* p = reinterpret_cast<uint8_t*>(packet->data());
  size_t n = packet->size();
  uint32_t sum = 0;
  size_t tcp = 0;
  if (n >= 20 && p[0] >> 4 == 4 && p[9] == IPPROTO_TCP) {
    tcp = static_cast<size_t>(p[0] & 0xf) * 4;
    size_t total = static_cast<size_t>(p[2] << 8 | p[3]);
    if (total != n || n < tcp + 20) return false;
    sum = Sum16(p + 12, 8, 0);  // source and destination
    sum += IPPROTO_TCP + static_cast<uint32_t>(n - tcp);
  } else if (n >= 40 && p[0] >> 4 == 6 && p[6] == IPPROTO_TCP) {
    tcp = 40;
    size_t payload = static_cast<size_t>(p[4] << 8 | p[5]);
    if (payload + 40 != n || n < tcp + 20) return false;
    sum = Sum16(p + 8, 32, 0);
    sum += IPPROTO_TCP + static_cast<uint32_t>(n - tcp);
  } else {
    return false;
  }
  p[tcp + 16] = p[tcp + 17] = 0;
  uint16_t check = Fold(Sum16(p + tcp, n - tcp, sum));
  p[tcp + 16] = static_cast<uint8_t>(check >> 8);
  p[tcp + 17] = static_cast<uint8_t>(check & 0xff);
  return true;
}

std::string EncodeFlow(const sys::TcpFlow& flow) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (const std::string* part : {&flow.local, &flow.peer}) {
    if (!out.empty()) out += '/';
    for (unsigned char c : *part) {
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

Result<sys::TcpFlow> DecodeFlow(const std::string& text) {
  auto slash = text.find('/');
  auto hex = [](const std::string& s) -> Result<std::string> {
    if (s.size() % 2 != 0) return Error::Invalid("odd hex length");
    std::string out;
    for (size_t i = 0; i < s.size(); i += 2) {
      int v = 0;
      for (char c : {s[i], s[i + 1]}) {
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return Error::Invalid("not hex: " + s);
        v = v * 16 + d;
      }
      out += static_cast<char>(v);
    }
    return out;
  };
  if (slash == std::string::npos) return Error::Invalid("flow '" + text + "': no '/'");
  sys::TcpFlow f;
  f.local = STASIS_TRY(hex(text.substr(0, slash)));
  f.peer = STASIS_TRY(hex(text.substr(slash + 1)));
  return f;
}

}  // namespace stasis::net
