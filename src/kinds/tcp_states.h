// TCP states other than LISTEN and ESTABLISHED (used by tcp_socket.cc).
//
// Half-closed and closing connections (FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT,
// LAST_ACK, CLOSING) are read in TCP_REPAIR mode like established ones. A
// FIN takes one sequence number: write_seq counts ours once it is queued and
// rcv_nxt counts the peer's once it arrived, but neither FIN is a byte of a
// queue. The socket is rebuilt as established with the same sequence
// numbers, then the shutdowns are replayed:
//  - our FIN already sent: shutdown(SHUT_WR) in repair mode with the send
//    queue selected, so the kernel files the FIN as sent without putting it
//    on the wire; if it was not acknowledged yet it is retransmitted like
//    data, and once acked (the window probe at repair-off draws the peer's
//    ACK) the socket is in FIN_WAIT2;
//  - our FIN not sent yet (behind unsent data or a closed window):
//    shutdown(SHUT_WR) after the unsent data, out of repair mode;
//  - the read side shut (the peer's FIN, or SHUT_RD): shutdown(SHUT_RD), so
//    reads give the queued bytes and then EOF. The kernel only enters
//    CLOSE_WAIT on a FIN segment, so such a socket reports ESTABLISHED (or
//    FIN_WAIT1/2 instead of LAST_ACK/CLOSING); what the program and the peer
//    see (bytes, EOF, writes allowed or EPIPE, one FIN each way) is the same.
//
// A TCP_CLOSE socket is either fresh (perhaps bound) or one whose connection
// ended (its read side is shut). An ended one keeps its unread bytes and is
// rebuilt through a throwaway loopback connection closed both ways. A
// pending error (SO_ERROR) cannot be read without consuming it from a
// program that must keep running if the dump fails: refused. SYN_SENT and
// SYN_RECV are refused, naming both addresses; TIME_WAIT and NEW_SYN_RECV
// sockets are never held by an fd.
#pragma once

#include <sys/types.h>

#include <string>

#include "sys/result.h"
#include "sys/unique_fd.h"
#include "tcp_socket.pb.h"

namespace stasis::kinds::tcp_states {

const char* StateName(int state);

// FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK or CLOSING.
bool IsHalfClosed(int state);

// Refuses a pending error; records the read side's shutdown.
Status DumpShutdown(int fd, image::TcpSocketState* s);

// Takes the FINs out of the queue lengths SIOCOUTQ and SIOCOUTQNSD report.
void AccountFins(int state, int* outq, int* unsent, image::TcpSocketState* s);

// write_seq without our FIN: where the send queue's bytes end.
uint32_t SendDataEnd(const image::TcpSocketState& s);

// Replays the shutdowns done before the dump, in repair mode with the send
// queue selected, after both queues are refilled. With `resend` the whole
// send queue goes out again after repair mode, and our FIN with it.
Status ReplayInRepair(int fd, const image::TcpSocketState& s, bool resend);

// Replays what must follow the unsent data (our unsent FIN), out of repair.
Status ReplayAfterRepair(int fd, const image::TcpSocketState& s, bool resend);

// TCP_CLOSE: fresh or ended; ended ones keep their unread bytes.
Status DumpClosed(int fd, image::TcpSocketState* s);
Result<sys::UniqueFd> RestoreEnded(const image::TcpSocketState& s);

// The refusal for a state that is not carried, with both addresses as
// /proc/net/tcp{,6} has them (getpeername fails in SYN_SENT).
Error Refuse(const std::string& what, ino_t inode, int family, int state);

}  // namespace stasis::kinds::tcp_states
