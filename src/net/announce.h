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
#include <chrono>
#include <string>

#include "sys/result.h"
#include "sys/rtnl.h"

namespace stasis::net {

inline constexpr size_t kArpFrameSize = 42;  // Ethernet header + ARP for IPv4
using ArpFrame = std::array<uint8_t, kArpFrameSize>;

// The gratuitous ARP request for `address` (network byte order) from
// `mac`. Pure.
ArpFrame GratuitousArp(uint32_t address, const sys::Mac& mac);

struct AnnounceOptions {
  int count = 3;
  // Between two of them: one frame lost in a burst (a port still learning,
  // a full queue) is likely followed by its neighbours.
  std::chrono::milliseconds interval{20};
};

// Sends `options.count` gratuitous ARPs for `address` out of `link` (with
// that link's own MAC) in the network namespace `netns_fd`; the calling
// thread is back in its own namespace on return. The first is sent before
// this returns, so an error comes back to the caller; the others from a
// detached thread of their own, which holds only its socket and the frame,
// so that the caller (a restore about to return) is not held by the waits.
// If the process exits first, the repeats are lost: the first went out.
Status Announce(int netns_fd, const std::string& link, uint32_t address,
                const AnnounceOptions& options = {});

}  // namespace stasis::net
