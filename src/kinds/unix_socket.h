// AF_UNIX sockets (socket:[ino]) of the stream, datagram and seqpacket
// types.
//
// Carried: socketpairs and named sockets (paths, with the socket file's mode
// and owner, also once unlinked; abstract names, autobound ones included);
// listeners with their backlog and the connections waiting in it, in accept
// order; accepted sockets, named after their listener; connections whose
// peer was closed; datagram sockets connected one way, and the sender's name
// of each queued datagram; receive queues in both directions with message
// boundaries and the uid and gid of SCM_CREDENTIALS; shutdown state;
// SO_PASSCRED, SO_PASSSEC, SO_PASSPIDFD, SO_SNDBUF, SO_RCVBUF, SO_RCVLOWAT,
// SO_SNDTIMEO, SO_RCVTIMEO, SO_PEEK_OFF, SO_OOBINLINE, SO_TIMESTAMP(NS) and
// the file status flags.
//
// The first unix socket File of the tree carries every unix socket of the
// tree (sock_diag: names, peers, backlogs), which its restore builds at once;
// each File then takes its own socket (RestoreContext::State<Sockets>).
//
// Refused (ErrorCode::kUnsupported, naming pid, fd, socket and name): a peer
// outside the dumped tree (its inode, name and a process holding it); a
// connection waiting in the backlog of a listener outside the tree; a
// listener whose backlog holds a client outside the tree or one already
// closed (with --external-unix=close, DumpPolicy, these three are carried
// as peers that closed: see unix_socket_graph.cc and docs/design.md); fds in
// flight (SCM_RIGHTS); a pending MSG_OOB byte; a socket filter; relative
// socket paths; a socket of another network namespace; an accepted socket
// whose listener is outside the tree and still holds the name; datagram
// shapes only a reconnect could have made (see unix_socket_graph.cc).
//
// Data a client sent on a connection still waiting in a backlog sits in the
// not yet accepted end, which only accept() reaches: it is read at the dump's
// point of no return (unix_socket_pending.cc) and sent again by the restored
// client before the tree runs. A --leave-running dump of such a tree is
// refused, since accept() would take the connection from the program.
//
// Not carried: SO_PEERCRED (the restorer made the connections), the pid of
// queued credentials (sent by the restorer, 0 in a new PID namespace), a
// pending SO_ERROR, SCM_SECURITY labels of queued messages.
// Needs CAP_NET_ADMIN (SIOCUNIXFILE, SO_SNDBUFFORCE); SO_PEEK_OFF (3.4+).
#pragma once

#include "kinds/fd_kind.h"

namespace stasis::kinds::unix_socket {

inline constexpr const char* kName = "unix_socket";
bool Matches(const FdDumpInput& in);
Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file);
// Its row in the registry (registry.cc).
extern const FdKind kKind;
// Sends again what waiting clients had sent (unix_socket_pending.cc).
Status ApplyLate(const LateRestore& ctx, const image::LateRecord& record);

}  // namespace stasis::kinds::unix_socket
