// Quick resumption of a TCP connection whose peer is outside the tree.
//
// While the network lock dropped its segments, the peer's retransmission
// timer backed off (200 ms, 400 ms, 800 ms, ...), and it would next
// retransmit only when that timer fires, long after the restored socket is
// back. RFC 6069 lets a sender undo that backoff when ICMP "host (or no
// route) unreachable" messages quote the segment it keeps retransmitting:
// Linux (tcp_ld_RTO_revert) then takes one step of backoff back per message
// and retransmits at once if the shorter timeout has already run out.
//
// NudgePeer sends such messages to the peer, each quoting a segment from the
// peer to `local` whose sequence number is the peer's snd_una: the last
// acknowledgment it received from us. The lock may have dropped our last
// ACKs, so the caller passes both candidates: the socket's rcv_wup (what its
// last ACK sent carried) and its rcv_nxt. Messages quoting another sequence
// number inside the peer's window only set the soft error. A peer with
// nothing to retransmit ignores them. The peer's kernel records the error as
// a soft error, reported only if the connection later times out. Caveat: a
// peer socket with IP_RECVERR set (rare for TCP) takes it as an error that
// its next read or write returns once (the connection itself stays up);
// stasis cannot see the options of a socket outside the tree.
#pragma once

#include <cstdint>
#include <string>

#include "sys/flow.h"
#include "sys/log.h"
#include "sys/result.h"

namespace stasis::net {

// local and peer are struct sockaddr_in/_in6 bytes (v4-mapped IPv6 is sent
// as IPv4). Needs CAP_NET_RAW.
Status NudgePeer(const std::string& local, const std::string& peer, uint32_t rcv_wup,
                 uint32_t rcv_nxt);
// Best effort, as the restore does it: without the nudge the peer resumes
// on its own timer, which `log` is told with the reason.
void NudgePeer(const sys::PeerNudge& nudge, Logger& log);

// The message for one nudge (exposed for tests): ICMP or ICMPv6 header
// followed by the quoted IP header and 8 bytes of TCP header. *v6 says
// which; *to is the peer's address to send it to.
Result<std::string> NudgeMessage(const std::string& local, const std::string& peer,
                                 uint32_t peer_una, bool* v6, std::string* to);

}  // namespace stasis::net
