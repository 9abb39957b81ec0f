// TCP sockets, IPv4 and IPv6: listeners and established connections.
//
// An established connection is read with TCP_REPAIR (sequence numbers, both
// queues, MSS, window scale, SACK, timestamps, windows) and rebuilt in repair
// mode, then released once every File of the image exists (its peer too, so
// the first segment it sends finds a socket, not an RST). While the dump
// holds it in repair mode it sends nothing; if the tree is killed its last
// close in repair mode is silent (no FIN, no RST). Needs CAP_NET_ADMIN.
//
// A connection whose peer is outside the tree is declared (Flows) to the
// network lock (net/netlock.h), which the dump takes for the whole tree;
// it holds the connection from the dump until the restored socket is back,
// so the peer only sees a pause. The restore then nudges the peer to
// retransmit at once (net/tcp_nudge.h) and the socket resends what the
// peer has not acknowledged.
// Connections waiting in a listener's accept queue: tcp_pending.h.
// Half-closed, closing and closed sockets, and the states refused:
// tcp_states.h.
#pragma once

#include "kinds/fd_kind.h"

namespace stasis::kinds::tcp_socket {

inline constexpr const char* kName = "tcp";
bool Matches(const FdDumpInput& in);
// The connection to hold, if its peer is outside the tree.
Result<std::vector<sys::TcpFlow>> Flows(DumpContext& ctx, const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;

}  // namespace stasis::kinds::tcp_socket
