// The network lock: nftables rules, in the caller's network namespace, that
// drop the packets of TCP connections whose local socket is gone for a
// while (dumped, not yet restored), so that their peers' segments draw no
// RST and they simply retransmit. One table per connection, named in the
// image, so the restore can lift it once the socket is back. Needs the
// `nft` command (Debian's nftables) and CAP_NET_ADMIN.
#pragma once

#include <string>

#include "sys/result.h"

namespace stasis::sys {

// While set (dumping an isolated session, whose host link is down: see
// sys/isolated_net.h), no flow needs a table of its own: LockTcpFlow
// returns kLinkLock and UnlockTcpFlow(kLinkLock) does nothing. The flow is
// still marked as held, so that its restore resends and nudges the peer
// (tcp_socket.cc) once the link is up again.
inline constexpr char kLinkLock[] = "session-link";
void SetFlowLocksCoveredByLink(bool covered);

// local and peer are struct sockaddr_in / sockaddr_in6 bytes. Returns the
// table name.
Result<std::string> LockTcpFlow(const std::string& local, const std::string& peer);
Status UnlockTcpFlow(const std::string& table);

// The nft ruleset LockTcpFlow installs (pure, for tests).
Result<std::string> LockRuleset(const std::string& table, const std::string& local,
                                const std::string& peer);

}  // namespace stasis::sys
