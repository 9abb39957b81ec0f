// The keeper of a network lock (net/netlock.h): a process of its own, since
// what it keeps must outlive the dump that took the lock and wait for the
// restore that lifts it. It is its own small program, stasis-netkeeper
// (src/netkeeper/main.cc, calling KeeperMain), installed beside stasis and
// found beside the running program.
//
// It copies the packets the locked flows' peers send, as they arrive on
// any interface of its network namespace (AF_PACKET, incoming packets only,
// a classic BPF filter on the flows' addresses and ports), while the lock
// drops them further up. When the lock is lifted it deletes the lock's
// table and sends them again, in the order they came, through a raw socket
// to the local address: they reach the restored sockets as if they had
// been late. It gives up after kKeepFor, or kKeepBytes of packets (the peers
// then resend on their own timers).
//
// An isolated session's lock is its host link, down (net/isolated_net.h):
// there the keeper takes every TCP packet sent to the session's address
// while the link is down, on any interface but the bridge itself (which
// sees a second copy of what crosses it), and when the link is up again
// sends them into it, addressed to the session's MAC, cut to the link's
// MTU.
//
// Spoken to over an abstract unix socket named after the lock, by root or
// the keeper's own user only: "add FLOW", "release", "quit".
#pragma once

#include <linux/filter.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "net/netlock.h"
#include "sys/result.h"
#include "sys/rtnl.h"

namespace stasis::net {

inline constexpr char kKeeperProgram[] = "stasis-netkeeper";
inline constexpr std::chrono::seconds kKeepFor{120};
inline constexpr size_t kKeepBytes = 64 << 20;

// In the dumping process: starts the keeper of `table` and returns once it
// captures the flows' packets.
Status StartKeeper(const std::string& table, const std::vector<sys::TcpFlow>& flows);
// The keeper of an isolated session's link lock.
struct LinkKeeperSpec {
  std::string host_link;  // by its name: the restore makes it again
  std::string bridge;
  sys::Mac mac = {};     // the session's (eth0's)
  uint32_t address = 0;  // the session's IPv4 address, network byte order
};
Status StartLinkKeeper(const LinkKeeperSpec& spec);
// Once the link forwards again: has the keeper of `host_link` send what it
// kept into the link. Says what it did; "" when there is no keeper.
Result<std::string> ReleaseLinkKeeper(const std::string& host_link);
// The session moved to another machine: what the keeper of `host_link`
// holds is for sockets that are not here any more; it quits, dropping it.
void QuitLinkKeeper(const std::string& host_link);

// Sends a request to the keeper of `table` and returns its answer
// ("ok..."); nullopt when there is no keeper (never started, gave up,
// another host).
Result<std::optional<std::string>> TellKeeper(const std::string& table, const std::string& request);
// The keeper process: `stasis-netkeeper NAME table FLOW...` or
// `stasis-netkeeper NAME link HOST_LINK BRIDGE MAC ADDRESS`, with fd 3 the
// pipe StartKeeper waits on. Returns the exit status.
int KeeperMain(int argc, char** argv);

// Pure, for tests.
std::string EncodeFlow(const sys::TcpFlow& flow);
Result<sys::TcpFlow> DecodeFlow(const std::string& text);
// Accepts the packets (from the IP header on) the flows' peers send them.
std::vector<sock_filter> CaptureFilter(const std::vector<sys::TcpFlow>& flows);
// True when the packet is one the flows' peers sent.
bool FromPeer(const std::string& packet, const std::vector<sys::TcpFlow>& flows);
// Accepts the IPv4 TCP packets (from the IP header on) sent to `address`
// (network byte order) that a device receives rather than sends.
std::vector<sock_filter> LinkCaptureFilter(uint32_t address);
// True when the packet is an IPv4 TCP packet to `address`.
bool ToAddress(const std::string& packet, uint32_t address);
// Cuts an IPv4 TCP packet bigger than `mtu` (a GSO packet, as captured)
// into packets that fit, with their sequence numbers, lengths and IP header
// checksums; each still needs FixTcpChecksum. Others come back whole.
std::vector<std::string> SegmentTcp4(const std::string& packet, size_t mtu);
// Recomputes the TCP checksum of an IPv4 or IPv6 packet (a copy taken on
// loopback has only the pseudo-header's part of it: the checksum is
// offloaded). False if it is not a whole TCP packet.
bool FixTcpChecksum(std::string* packet);

}  // namespace stasis::net
