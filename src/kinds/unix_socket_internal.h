// Internals of the AF_UNIX socket kind, shared by its files:
//   unix_socket.cc        the kind: per-File state (options, flags), entry points
//   unix_socket_diag.cc   sock_diag (NETLINK_SOCK_DIAG, AF_UNIX) over netlink
//   unix_socket_names.cc  addresses; binding names at restore
//   unix_socket_queue.cc  receive queues: peeked at dump, sent again at restore
//   unix_socket_graph.cc  dump: every unix socket of the tree, how they are tied
//   unix_socket_build.cc  restore: the sockets of the graph, built together
//   unix_socket_pending.cc  data sent on connections waiting in a backlog
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "kinds/context.h"
#include "sys/result.h"
#include "sys/unique_fd.h"
#include "unix_socket.pb.h"

namespace stasis::kinds::unix_socket {

// What the dump knows once the first unix socket File made the graph
// (DumpContext::State): the graph is in that File, and these sockets are
// its nodes.
struct DumpState {
  bool graph_dumped = false;
  std::set<uint64_t> in_graph;  // inodes
};

// Sockets the graph build made, waiting for their File's Restore to take
// them; by inode at dump (RestoreContext::State).
struct Sockets {
  std::map<uint64_t, sys::UniqueFd> by_ino;
};

// --- sock_diag (unix_socket_diag.cc) -----------------------------------------

// One socket as sock_diag shows it (include/uapi/linux/unix_diag.h).
struct DiagEntry {
  uint64_t ino = 0;
  uint8_t type = 0;   // SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
  uint8_t state = 0;  // TCP_ESTABLISHED 1, TCP_CLOSE 7, TCP_LISTEN 10
  std::string name;   // UNIX_DIAG_NAME, in UnixAddress.name form (path without its NUL)
  bool has_vfs = false;
  uint32_t vfs_ino = 0;         // UNIX_DIAG_VFS: the socket file (also shown on accepted sockets)
  uint32_t vfs_dev = 0;         // the superblock's s_dev, kernel encoding (MAJOR << 20 | MINOR)
  uint64_t peer = 0;            // UNIX_DIAG_PEER
  std::vector<uint64_t> icons;  // UNIX_DIAG_ICONS: clients waiting in a listener's backlog
  // UNIX_DIAG_RQLEN: for a listener, connections waiting and the backlog;
  // otherwise unread bytes (datagrams: the first message's) and the bytes
  // (truesize) it sent that its peer has not read yet.
  uint32_t rqueue = 0;
  uint32_t wqueue = 0;
  uint8_t shutdown = 0;  // UNIX_DIAG_SHUTDOWN
};
using DiagTable = std::map<uint64_t, DiagEntry>;

// Parses one SOCK_DIAG_BY_FAMILY reply: struct unix_diag_msg + attributes.
Result<DiagEntry> ParseDiagMessage(std::string_view payload);
// Parses a buffer of netlink messages into `table`; sets *done on NLMSG_DONE.
Status ParseDiagReply(std::string_view buf, DiagTable* table, bool* done);
// Every unix socket of the caller's network namespace.
Result<DiagTable> DumpDiagTable();
// True when a socket in `table` is bound to the socket file (dev, ino)
// (its UNIX_DIAG_VFS): the file is not a stale one left by a dead socket.
bool FileInUse(const DiagTable& table, dev_t dev, ino_t ino);

// --- addresses and names (unix_socket_names.cc) ------------------------------

inline bool IsAbstract(std::string_view name) { return !name.empty() && name[0] == '\0'; }
// For messages: "/run/x.sock", "@name" (abstract, non-printable bytes
// escaped), "(unnamed)".
std::string ShowName(std::string_view name);
// "socket:[123]" -> 123; false for other links.
bool ParseSocketLink(std::string_view link, uint64_t* ino);
// sockaddr_un bytes back to UnixAddress.name form.
std::string NameFromSockaddr(const sockaddr_un& sa, socklen_t len);
// UnixAddress.name form to a sockaddr_un; false when it does not fit.
bool ToSockaddr(std::string_view name, sockaddr_un* sa, socklen_t* len);
// getsockname / getpeername of fd in UnixAddress.name form; getpeername of
// an unconnected socket gives ENOTCONN.
Result<std::string> SockName(int fd, bool peer);

// Where a restored socket is reached for connect() and sendto(): its
// abstract name, or /proc/self/fd/N of an O_PATH fd of its socket file,
// which works after that file is unlinked or renamed (unix_find_bsd looks
// the inode up, whatever path leads to it).
struct Target {
  std::string name;    // abstract name, or empty
  sys::UniqueFd file;  // O_PATH fd of the socket file, for path names
  Result<socklen_t> Address(sockaddr_un* sa) const;
};

// Binds fd to `addr` (a name of UnixAddress.name form). Path names: the
// directory must exist. keep: the socket file stays; a stale socket file
// found at the path (no live socket is bound to it) is removed first, and
// the file gets addr's mode and owner. !keep (a name whose file was deleted,
// a stand-in): the file is unlinked again at once and whatever was at the
// path is put back. Returns how to reach the socket.
Result<Target> BindName(int fd, const image::UnixAddress& addr, bool keep);

// Binds a stand-in (a socket that only lives during the restore's build) to
// `name` without disturbing whatever holds the name now. A path that exists
// (a live socket file of a program outside the tree, or a stale one) is
// bound in a throwaway mount namespace, on a tmpfs, so nothing on the host
// moves; the Target reaches it through its O_PATH fd (unix_socket_standin.cc).
// An abstract name in use cannot be shared: EADDRINUSE.
Result<Target> BindStandIn(int fd, const std::string& name);
// True when a live socket of this type holds the abstract name (the kernel
// keeps one abstract namespace per socket type); a path: false.
bool AbstractNameTaken(const std::string& name, int type);

// --- receive queues (unix_socket_queue.cc) ------------------------------------

// The receive queue of fd (a stolen fd: it shares the task's socket) without
// consuming it. Refuses fds in flight (SCM_RIGHTS) and a pending MSG_OOB byte.
// `what` names the socket in errors.
Result<std::vector<image::UnixMessage>> PeekQueue(int fd, int type, const std::string& what);
// Sends msg from `from`, to `to` (sendto) or to from's peer when `to` is
// null, with its credentials; never blocks.
Status SendMessage(int from, const Target* to, int type, const image::UnixMessage& msg,
                   const std::string& what);
// Lets `fd` send `bytes` more without waiting for the reader (SO_SNDBUFFORCE);
// the File's own SO_SNDBUF is set again after the build.
Status RaiseSndbuf(int fd, uint64_t bytes);

// --- the graph (unix_socket_graph.cc, unix_socket_build.cc) -------------------

// Every unix socket of the tree (ctx.fd_index), with names, peers, backlogs
// and queues; `in` is the File being dumped (its fd is already in the
// dumper). Adds every node to DumpState::in_graph.
Status DumpGraph(DumpContext& ctx, const FdDumpInput& in, image::UnixSocketGraph* graph);
// Checks that the graph is whole (peers and clients are nodes, one type per
// connection); restore validates before it builds anything.
Status ValidateGraph(const image::UnixSocketGraph& graph);
// Creates every socket of the graph into out->by_ino.
Status BuildGraph(const image::UnixSocketGraph& graph, Sockets* out);

// --- data on waiting connections (unix_socket_pending.cc) -------------------

// A listener of the graph whose backlog holds a client that sent data.
struct PendingListener {
  uint64_t ino;
  int type;
  sys::UniqueFd fd;  // a duplicate of the task's listener, to accept() from
  std::vector<const image::UnixSocketNode*> clients;  // the backlog, in accept order
  std::string what;                                   // DescribeNode of the listener
};
// Registers the late step that accepts every connection of these backlogs
// and reads what their clients sent (DumpContext::late). The nodes must
// outlive the dump (they are the File's graph).
void AddPendingStep(DumpContext& ctx, std::vector<PendingListener> listeners);
// Refuses a listener whose waiting connections carry fds in flight
// (SCM_RIGHTS): fdinfo's "scm_fds:" of a listener counts those in the
// queues of its not yet accepted ends (unix_show_fdinfo, 5.13+). Without
// that line the check waits for the point of no return.
Status CheckNoFdsWaiting(pid_t pid, int fd, const std::string& what);

// "pid 4 fd 5 (socket:[6], @name)".
std::string DescribeNode(const image::UnixSocketNode& node);

}  // namespace stasis::kinds::unix_socket
