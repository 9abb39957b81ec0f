// A TCP connection by its two ends, as the kernel's sockaddr bytes give
// them: what a kind hands the network lock (net/netlock.h) to hold.
#pragma once

#include <stdint.h>

#include <array>
#include <string>

#include "sys/result.h"

namespace stasis::sys {

// A connection, by its ends: struct sockaddr_in / sockaddr_in6 bytes.
struct TcpFlow {
  std::string local;
  std::string peer;
  bool operator==(const TcpFlow&) const = default;
};

// One end of a flow as its packets carry it: a v4-mapped IPv6 address
// travels as IPv4.
struct FlowEnd {
  bool v4 = false;
  std::array<uint8_t, 16> addr = {};  // network order; IPv4 in the first 4 bytes
  uint16_t port = 0;                  // host order
};
Result<FlowEnd> ParseFlowEnd(const std::string& sockaddr_bytes);

// A restored connection whose peer's retransmissions backed off while the
// lock held them: what the nudge (net/tcp_nudge.h) needs to have the peer
// retransmit at once. rcv_wup is what the socket's last ACK carried,
// rcv_nxt what it expects next.
struct PeerNudge {
  TcpFlow flow;
  uint32_t rcv_wup = 0;
  uint32_t rcv_nxt = 0;
};

}  // namespace stasis::sys
