// Connections waiting in a TCP listener's accept queue, IPv4 and IPv6.
//
// A connection the kernel completed but the program has not accepted yet is
// a socket no fd reaches: only accept() takes it out of the queue, and with
// it what the client already sent. Carried when the client end is a socket
// of the tree (loopback): at dump time every connection of the queue is
// matched with its client through sock_diag (the queued sockets have no
// inode) and checked; at the dump's point of no return (a LateStep) the
// dumper accepts them on its own duplicate of the listener and reads their
// receive queues in TCP_REPAIR mode (so closing them afterwards is silent).
// The restore rebuilds each as a real connection: the client, restored bound
// to its old address but unconnected, connects to the restored listener in
// the original accept order, then sends what was queued on the server side
// and its own unsent and unacknowledged bytes. After restore accept() returns
// a connection with the same addresses and data. The new connection has new
// sequence numbers and negotiated options, which the program cannot see.
//
// Refused (ErrorCode::kUnsupported, naming pid, fd, listener and peer):
//   - a queued connection whose client is outside the dumped tree: it
//     cannot be carried (a socket rebuilt with TCP_REPAIR cannot be put into
//     an accept queue, and a new handshake would need the outside peer);
//   - a connection still in its handshake (SYN_RECV, a request socket), on
//     the listener (even with an empty queue) and on the client;
//   - a queued connection the client already closed (CLOSE_WAIT);
//   - a listener sharing its port with another listener (SO_REUSEPORT):
//     which queue holds which connection is not shown;
//   - --leave-running (checkpoint/dump.cc): accept() would take the
//     connections from the program, and they cannot be put back.
//
// sock_diag is asked in the network namespace of the socket being dumped
// (SIOCGSKNS), once per namespace per dump. Needs CAP_NET_ADMIN (TCP_REPAIR
// on the accepted ends, SO_SNDBUFFORCE).
#pragma once

#include <string>

#include "kinds/context.h"
#include "tcp_socket.pb.h"

namespace stasis::kinds::tcp_pending {

// For tcp_socket::Dump of every listener, with `queued` connections waiting
// (TCP_INFO tcpi_unacked): checks them and registers the late step; refuses
// handshakes in progress even when nothing is queued yet.
Status DumpListener(DumpContext& ctx, const FdDumpInput& in, const std::string& local,
                    uint32_t queued);
// For tcp_socket::Dump of an established socket (local, peer): true when its
// other end waits in the accept queue of a listener of the tree; refuses a
// socket whose other end there is still a request socket (SYN_RECV).
Result<bool> WaitsInAcceptQueue(DumpContext& ctx, const FdDumpInput& in, const std::string& local,
                                const std::string& peer);
// Connects the waiting clients again and refills the queues.
Status ApplyLate(const LateRestore& ctx, const image::LateRecord& record);

}  // namespace stasis::kinds::tcp_pending
