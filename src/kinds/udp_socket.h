// UDP sockets, IPv4 and IPv6: bound and connected addresses, options, flags.
// Datagrams waiting in the receive queue are carried (udp_queue.h). Not
// carried yet: multicast memberships.
#pragma once

#include "kinds/fd_kind.h"

namespace stasis::kinds::udp_socket {

inline constexpr const char* kName = "udp";
bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;

}  // namespace stasis::kinds::udp_socket
