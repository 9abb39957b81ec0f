// The network lock: while the local sockets of TCP connections to peers
// outside the tree are gone (dumped, not yet restored), nothing of those
// connections may reach a socket of the host (it would answer RST) and
// nothing the dying sockets send may reach the peer.
//
// It is an nftables table in the caller's network namespace that drops the
// flows' packets in both directions, one table per dump (the flows in sets,
// so one `nft` run locks them all), named in the image so that the restore
// can lift it. What the peers send meanwhile is not lost, though: a keeper
// process (net/packet_keeper.h) copies the dropped packets as they arrive
// and, when the restore lifts the lock, hands them to the restored sockets.
// The peers then carry on at once, whether or not their retransmission
// timers have backed off. Without a keeper (it gave up waiting, or the
// restore runs on another host) the peers resend on their own timers.
//
// Needs the `nft` command (Debian's nftables) and CAP_NET_ADMIN.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sys/flow.h"
#include "sys/log.h"
#include "sys/result.h"

namespace stasis::net {

using sys::TcpFlow;

// The name of the lock of an isolated session's flows: its host link, down
// (net/isolated_net.h), holds them all, and no table is needed. Its flows
// are still marked as held, so that their restore resends and nudges the
// peers (tcp_socket.cc) once the link is up again.
inline constexpr char kLinkLock[] = "session-link";

class FlowLock {
 public:
  // Locks `flows` (which may be empty) in one table, with a keeper for what
  // their peers send, started first. Says on `log` when it runs without a
  // keeper.
  static Result<std::unique_ptr<FlowLock>> Take(const std::vector<sys::TcpFlow>& flows,
                                                Logger& log);
  // The lock of an isolated session's flows, which its link already holds
  // (net/session_dump.h): it changes nothing in the kernel.
  static std::unique_ptr<FlowLock> CoveredByLink(const std::vector<sys::TcpFlow>& flows);

  const std::string& table() const { return table_; }
  bool Covers(const sys::TcpFlow& flow) const;
  // Locks a flow that was not known when the lock was taken: the kernel
  // may finish a handshake while the tree is frozen.
  Status Add(const sys::TcpFlow& flow);
  // For a tree that keeps running (--leave-running, a failed dump), once
  // its sockets left repair mode: lifts the lock and hands them what the
  // peers sent meanwhile. Says what it did (see ReleaseFlowLock).
  Result<std::string> Release();

 private:
  FlowLock(std::string table, std::vector<sys::TcpFlow> flows)
      : table_(std::move(table)), flows_(std::move(flows)) {}
  std::string table_;
  std::vector<sys::TcpFlow> flows_;
  bool released_ = false;
};

// The restore's side: lifts the lock `table` (made by a dump's FlowLock,
// here or on another host) and has its keeper, if it is still there, hand
// the restored sockets what their peers sent meanwhile. The sockets must
// be out of repair mode. A table that is gone already is fine. Says what
// it did, for the user: "" for no lock, else a line naming the table.
Result<std::string> ReleaseFlowLock(const std::string& table);

// The nft ruleset FlowLock::Take installs (pure, for tests).
Result<std::string> LockRuleset(const std::string& table, const std::vector<sys::TcpFlow>& flows);
// The nft command that adds one flow to it (pure, for tests).
Result<std::string> AddFlowCommand(const std::string& table, const sys::TcpFlow& flow);

}  // namespace stasis::net
