// The network lock: while the local sockets of TCP connections to peers
// outside the tree are gone (dumped, not yet restored), nothing of those
// connections may reach a socket of the host (it would answer RST) and
// nothing the dying sockets send may reach the peer.
//
// It is an nftables table in the caller's network namespace that drops the
// flows' packets in both directions, one table per dump (the flows in sets,
// so one `nft` run locks them all), named in the image so that the restore
// can lift it. What the peers send meanwhile is not lost, though: a keeper
// process (sys/packet_keeper.h) copies the dropped packets as they arrive
// and, when the restore lifts the lock, hands them to the restored sockets.
// The peers then carry on at once, whether or not their retransmission
// timers have backed off. Without a keeper (it gave up waiting, or the
// restore runs on another host) the peers resend on their own timers.
//
// Needs the `nft` command (Debian's nftables) and CAP_NET_ADMIN.
#pragma once

#include <stdint.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

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

// While set (dumping an isolated session, whose host link is down: see
// sys/isolated_net.h), no flow needs a table: FlowLock::Take makes a lock
// named kLinkLock that does nothing. Its flows are still marked as held, so
// that their restore resends and nudges the peers (tcp_socket.cc) once the
// link is up again.
inline constexpr char kLinkLock[] = "session-link";
void SetFlowLocksCoveredByLink(bool covered);

class FlowLock {
 public:
  // Locks `flows` (which may be empty) in one table, with a keeper for what
  // their peers send.
  static Result<std::unique_ptr<FlowLock>> Take(const std::vector<TcpFlow>& flows);

  const std::string& table() const { return table_; }
  bool Covers(const TcpFlow& flow) const;
  // Locks a flow that was not known when the lock was taken: the kernel
  // may finish a handshake while the tree is frozen.
  Status Add(const TcpFlow& flow);
  // For a tree that keeps running (--leave-running, a failed dump), once
  // its sockets left repair mode: lifts the lock and hands them what the
  // peers sent meanwhile. Says what it did (see ReleaseFlowLock).
  Result<std::string> Release();

 private:
  FlowLock(std::string table, std::vector<TcpFlow> flows)
      : table_(std::move(table)), flows_(std::move(flows)) {}
  std::string table_;
  std::vector<TcpFlow> flows_;
  bool released_ = false;
};

// The restore's side: lifts the lock `table` (made by a dump's FlowLock,
// here or on another host) and has its keeper, if it is still there, hand
// the restored sockets what their peers sent meanwhile. The sockets must
// be out of repair mode. A table that is gone already is fine. Says what
// it did, for the user: "" for no lock, else a line naming the table.
Result<std::string> ReleaseFlowLock(const std::string& table);

// The nft ruleset FlowLock::Take installs (pure, for tests).
Result<std::string> LockRuleset(const std::string& table, const std::vector<TcpFlow>& flows);
// The nft command that adds one flow to it (pure, for tests).
Result<std::string> AddFlowCommand(const std::string& table, const TcpFlow& flow);

}  // namespace stasis::sys
