// Announcing a session where it runs now, as a migrated VM does (QEMU's
// announce after a switch-over).
//
// An isolated session keeps its address and MAC when it moves to another
// machine on the same layer-2 segment (docs/cluster.md), so its peers'
// neighbour caches stay right; but the switches (bridges) between them
// still forward the session's MAC to the port it was last seen on, the old
// machine's, until they see a frame from it elsewhere or their entry ages
// out (300 s by default on a Linux bridge). A gratuitous ARP, sent from the
// session's eth0 as soon as the restored tree owns its network, teaches them
// at once; it also refreshes the ARP entries peers already hold for the
// address. Its form is the one the kernel itself sends when an address
// comes up (arp_send with ARPOP_REQUEST): broadcast, sender = target = the
// session's address, target MAC zero.
//
// IPv6 would want an unsolicited neighbour advertisement as well; a
// session's eth0 has no global IPv6 address today, so none is sent.
//
// Needs CAP_NET_RAW in the session's namespace (an AF_PACKET socket) and
// CAP_SYS_ADMIN to enter it.
#pragma once

#include <stdint.h>

#include <array>
#include <string>

#include "sys/result.h"
#include "sys/rtnl.h"

namespace stasis::net {

inline constexpr size_t kArpFrameSize = 42;  // Ethernet header + ARP for IPv4
using ArpFrame = std::array<uint8_t, kArpFrameSize>;

// The gratuitous ARP request for `address` (network byte order) from
// `mac`. Pure.
ArpFrame GratuitousArp(uint32_t address, const sys::Mac& mac);

// Sends `count` gratuitous ARPs for `address` (network byte order) out of
// `link` (with that link's own MAC) in the network namespace `netns_fd`;
// the calling thread is back in its own namespace on return.
//
// Back to back, not spaced out as QEMU does (50 ms, then 150, 250...): the
// caller is a restore that has just released the tree and must not wait
// (a lazy restore's pager is released after it), and the process that
// restores often exits at once (stasis restore, receive --once), which
// would take the later frames of a detached thread with it (one of three
// arrived so, in tests/system/test_cluster.py). Three frames still cover
// one lost on its own; right after them the session's own resends and the
// restore's TCP nudges (net/tcp_nudge.h) teach the switches as well.
Status Announce(int netns_fd, const std::string& link, uint32_t address, int count = 3);

}  // namespace stasis::net
