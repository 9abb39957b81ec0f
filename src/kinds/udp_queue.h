// The receive queue of a UDP socket (used by udp_socket.cc).
//
// Dump: each datagram is copied with recvmsg(MSG_PEEK) at an increasing
// SO_PEEK_OFF (UDP honours peek offsets, advancing by whole datagrams), with
// its source address and boundaries, and the program's own peek offset is
// put back. A pending error (SO_ERROR, e.g. ECONNREFUSED from an ICMP port
// unreachable, or an IP_RECVERR error queue) cannot be read without taking
// it from the program: refused.
//
// Restore: before the socket is connected and before the program runs,
// each datagram is sent again, in order, from its original source address
// and port through a raw socket (IP_HDRINCL / IPPROTO_RAW, so no port has to
// be free at the source and no peer is involved) to the socket's address
// (loopback when it is bound to the wildcard address; the destination
// address a datagram was sent to is not kept). Each one is waited for
// (SO_MEMINFO) before the next is sent, so the order holds. Needs CAP_NET_RAW.
//
// Not seen: an empty (zero-byte) datagram that the program itself already
// peeked at. The kernel marks it and every peek at an offset skips it, and
// nothing else tells that it is there.
#pragma once

#include "sys/result.h"
#include "udp_socket.pb.h"

namespace stasis::kinds::udp_queue {

Status Dump(int fd, image::UdpSocketState* s);
Status Restore(int fd, const image::UdpSocketState& s);

}  // namespace stasis::kinds::udp_queue
