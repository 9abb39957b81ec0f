// What a dump for another machine (DumpPolicy::moving_host) refuses: a
// socket whose peer is outside the tree. The tree's address stays on this
// host, so the peer could reach it nowhere else; the tcp and udp kinds ask
// this when they find one.
#pragma once

#include <string>

#include "kinds/context.h"

namespace stasis::kinds {

// An inet sockaddr (its bytes, as getsockname gives them) for messages:
// "127.0.0.1:80", "[::1]:80".
std::string ShowInetAddr(const std::string& addr);
// The refusal, naming the socket: `proto` is "tcp" or "udp".
Error OutsidePeerCannotMove(const char* proto, const FdDumpInput& in, const std::string& local,
                            const std::string& peer);

}  // namespace stasis::kinds
