// Receive queues of unix sockets.
//
// Dump: recvmsg(MSG_PEEK) on the stolen fd, which shares the task's socket,
// so the task keeps its data. SO_PEEK_OFF (3.4+ for AF_UNIX) makes each peek
// start where the last one ended, which walks the whole queue: datagrams and
// seqpacket messages one per peek (boundaries kept), stream data up to the
// next change of credentials. SO_PEEK_OFF and SO_PASSCRED belong to the
// socket, so the task's values are put back afterwards. SO_PASSCRED is on
// while peeking so that every message comes with SCM_CREDENTIALS: that tells
// an empty seqpacket message from the end of a shut-down queue (both read 0).
//
// Restore: each message is sent again by the socket the receiver would have
// got it from, with explicit SCM_CREDENTIALS (uid and gid as dumped).
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <climits>
#include <cstring>

#include "kinds/unix_socket_internal.h"

namespace stasis::kinds::unix_socket {
namespace {

constexpr size_t kFirstBuffer = 64 << 10;
constexpr size_t kMaxFdsPerMessage = 253;  // SCM_MAX_FD
constexpr int kScmPidfd = 0x04;            // SCM_PIDFD (6.5+), not in 6.1 headers
constexpr size_t kControlBuffer = CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage) +
                                  CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int)) + 512;

Result<int> GetInt(int fd, int opt, const char* name) {
  int value = 0;
  socklen_t len = sizeof value;
  if (getsockopt(fd, SOL_SOCKET, opt, &value, &len) < 0) return Error::Errno(name);
  return value;
}

Status SetInt(int fd, int opt, int value, const char* name) {
  if (setsockopt(fd, SOL_SOCKET, opt, &value, sizeof value) < 0) {
    return Error::Errno(fmt::format("{} {}", name, value));
  }
  return Ok();
}

// The task's SO_PEEK_OFF and SO_PASSCRED, put back when the walk ends.
class SavedPeekState {
 public:
  SavedPeekState(int fd, int peek_off, int passcred)
      : fd_(fd), peek_off_(peek_off), passcred_(passcred) {}
  SavedPeekState(const SavedPeekState&) = delete;
  SavedPeekState& operator=(const SavedPeekState&) = delete;
  ~SavedPeekState() { (void)Restore(); }
  Status Restore() {
    if (done_) return Ok();
    done_ = true;
    STASIS_TRY(SetInt(fd_, SO_PEEK_OFF, peek_off_, "put back SO_PEEK_OFF"));
    return SetInt(fd_, SO_PASSCRED, passcred_, "put back SO_PASSCRED");
  }

 private:
  int fd_, peek_off_, passcred_;
  bool done_ = false;
};

struct Peeked {
  bool end = false;
  size_t length = 0;  // datagrams: the whole message's (MSG_TRUNC)
  image::UnixMessage msg;
};

// Reads the control messages of one peek: credentials kept, fds closed.
Status ReadControl(msghdr& m, const std::string& what, bool* has_creds_cmsg,
                   image::UnixMessage* msg) {
  size_t rights = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET) continue;
    size_t len = c->cmsg_len - CMSG_LEN(0);
    if (c->cmsg_type == SCM_RIGHTS || c->cmsg_type == kScmPidfd) {
      // MSG_PEEK installs the fds in flight in the peeker too.
      for (size_t i = 0; i + sizeof(int) <= len; i += sizeof(int)) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i, sizeof fd);
        close(fd);
        rights += c->cmsg_type == SCM_RIGHTS;
      }
    } else if (c->cmsg_type == SCM_CREDENTIALS && len >= sizeof(ucred)) {
      ucred cred;
      std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
      *has_creds_cmsg = true;
      // Credentials that were never attached read as pid 0 and the
      // overflow uid (scm_recv_unix).
      if (cred.pid != 0) {
        msg->set_has_creds(true);
        msg->set_uid(cred.uid);
        msg->set_gid(cred.gid);
      }
    }
  }
  if (rights > 0) {
    return Error::Unsupported(fmt::format(
        "{}: {} file descriptor(s) in flight in its receive queue (SCM_RIGHTS) are not supported",
        what, rights));
  }
  if (m.msg_flags & MSG_CTRUNC) {
    return Error::Unsupported(what +
                              ": a message in its receive queue carries more control data "
                              "than a peek can show (MSG_CTRUNC)");
  }
  return Ok();
}

Result<Peeked> PeekOne(int fd, bool datagram, std::string& buf, const std::string& what) {
  alignas(cmsghdr) char control[kControlBuffer];
  sockaddr_un from = {};
  iovec iov = {buf.data(), buf.size()};
  msghdr m = {};
  m.msg_name = &from;
  m.msg_namelen = sizeof from;
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  int flags = MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC | (datagram ? MSG_TRUNC : 0);
  ssize_t n;
  do {
    n = recvmsg(fd, &m, flags);
  } while (n < 0 && errno == EINTR);
  Peeked p;
  if (n < 0) {
    if (errno == EAGAIN) {
      p.end = true;
      return p;
    }
    return Error::Errno(what + ": recvmsg(MSG_PEEK)");
  }
  bool has_creds_cmsg = false;
  STASIS_TRY(ReadControl(m, what, &has_creds_cmsg, &p.msg));
  // The end of a shut-down stream or seqpacket queue reads 0 with no
  // control message; a message, even an empty one, has its credentials.
  if (n == 0 && (!datagram || !has_creds_cmsg)) {
    p.end = true;
    return p;
  }
  p.length = static_cast<size_t>(n);
  p.msg.set_data(buf.data(), std::min(p.length, buf.size()));
  if (datagram)
    p.msg.set_sender(NameFromSockaddr(from, std::min<socklen_t>(m.msg_namelen, sizeof from)));
  return p;
}

bool SameCreds(const image::UnixMessage& a, const image::UnixMessage& b) {
  return a.has_creds() == b.has_creds() && a.uid() == b.uid() && a.gid() == b.gid();
}

Result<std::vector<image::UnixMessage>> Walk(int fd, int type, const std::string& what) {
  bool datagram = type != SOCK_STREAM;
  std::vector<image::UnixMessage> out;
  std::string buf(kFirstBuffer, '\0');
  int offset = 0;
  if (datagram) {
    // The head with SO_PEEK_OFF off: an empty message the task already
    // peeked at is marked "peeked" (skb_set_peeked), and a walk with an
    // offset skips it.
    STASIS_TRY(SetInt(fd, SO_PEEK_OFF, -1, "SO_PEEK_OFF"));
    Peeked head = STASIS_TRY(PeekOne(fd, true, buf, what));
    if (head.end) return out;
    if (head.length > buf.size()) {
      buf.resize(head.length);
      head = STASIS_TRY(PeekOne(fd, true, buf, what));
    }
    offset = static_cast<int>(head.length);
    out.push_back(std::move(head.msg));
  }
  for (;;) {
    STASIS_TRY(SetInt(fd, SO_PEEK_OFF, offset, "SO_PEEK_OFF"));
    Peeked p = STASIS_TRY(PeekOne(fd, datagram, buf, what));
    if (p.end) return out;
    if (p.length > buf.size()) {  // a datagram larger than the buffer: again, whole
      buf.resize(p.length);
      continue;
    }
    if (p.length > static_cast<size_t>(INT_MAX - offset)) {
      return Error::Unsupported(what + ": receive queue larger than 2 GiB");
    }
    offset += static_cast<int>(p.length);
    if (!datagram && !out.empty() && SameCreds(out.back(), p.msg)) {
      out.back().mutable_data()->append(p.msg.data());
    } else {
      out.push_back(std::move(p.msg));
    }
  }
}

// FIONREAD (unix_inq_len) counts every unread byte of a stream or seqpacket
// queue, and only the first datagram's.
Status CheckTotal(int fd, int type, const std::vector<image::UnixMessage>& queue,
                  const std::string& what) {
  int inq = 0;
  if (ioctl(fd, FIONREAD, &inq) < 0) return Error::Errno(what + ": FIONREAD");
  size_t want = 0;
  if (type == SOCK_DGRAM) {
    want = queue.empty() ? 0 : queue[0].data().size();
  } else {
    for (const image::UnixMessage& m : queue) want += m.data().size();
  }
  if (static_cast<size_t>(inq) != want) {
    return Error(
        ErrorCode::kFailed,
        fmt::format("{}: peeked {} bytes of its receive queue, FIONREAD says {}", what, want, inq));
  }
  return Ok();
}

// MSG_OOB (5.15+ for AF_UNIX streams) keeps one byte aside; MSG_PEEK|MSG_OOB
// reads it, and EINVAL says there is none.
Status CheckNoOob(int fd, const std::string& what) {
  char byte;
  ssize_t n = recv(fd, &byte, 1, MSG_OOB | MSG_PEEK | MSG_DONTWAIT);
  if (n >= 0) {
    return Error::Unsupported(what + ": an out-of-band byte (MSG_OOB) is pending");
  }
  return Ok();
}

}  // namespace

Result<std::vector<image::UnixMessage>> PeekQueue(int fd, int type, const std::string& what) {
  if (type == SOCK_STREAM) STASIS_TRY(CheckNoOob(fd, what));
  int peek_off = STASIS_TRY(GetInt(fd, SO_PEEK_OFF, "SO_PEEK_OFF"));
  int passcred = STASIS_TRY(GetInt(fd, SO_PASSCRED, "SO_PASSCRED"));
  SavedPeekState saved(fd, peek_off, passcred);
  STASIS_TRY(SetInt(fd, SO_PASSCRED, 1, "SO_PASSCRED"));
  Result<std::vector<image::UnixMessage>> queue = Walk(fd, type, what);
  Status restored = saved.Restore();
  if (!queue.ok()) return std::move(queue).error();
  if (!restored.ok()) return std::move(restored).error().Context(what);
  STASIS_TRY(CheckTotal(fd, type, queue.value(), what));
  return queue;
}

Status SendMessage(int from, const Target* to, int type, const image::UnixMessage& msg,
                   const std::string& what) {
  sockaddr_un sa;
  socklen_t sa_len = to != nullptr ? STASIS_TRY(to->Address(&sa)) : 0;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))] = {};
  const std::string& data = msg.data();
  size_t done = 0;
  do {
    iovec iov = {const_cast<char*>(data.data()) + done, data.size() - done};
    msghdr m = {};
    m.msg_name = to != nullptr ? &sa : nullptr;
    m.msg_namelen = sa_len;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (msg.has_creds()) {
      // Root may name any uid and gid; the pid must be a live one.
      ucred cred = {getpid(), msg.uid(), msg.gid()};
      m.msg_control = control;
      m.msg_controllen = sizeof control;
      cmsghdr* c = CMSG_FIRSTHDR(&m);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_CREDENTIALS;
      c->cmsg_len = CMSG_LEN(sizeof cred);
      std::memcpy(CMSG_DATA(c), &cred, sizeof cred);
    }
    ssize_t n = sendmsg(from, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return Error::Errno(
          fmt::format("{}: send {} bytes of its receive queue again", what, data.size() - done));
    }
    if (type != SOCK_STREAM && static_cast<size_t>(n) != data.size()) {
      return Error(ErrorCode::kFailed,
                   fmt::format("{}: sent {} of a {}-byte message", what, n, data.size()));
    }
    done += static_cast<size_t>(n);
  } while (done < data.size());
  return Ok();
}

Status RaiseSndbuf(int fd, uint64_t bytes) {
  int current = STASIS_TRY(GetInt(fd, SO_SNDBUF, "SO_SNDBUF"));
  // SO_SNDBUFFORCE doubles its argument (skb overhead), as SO_SNDBUF does.
  uint64_t want = static_cast<uint64_t>(current) + 2 * bytes;
  int half = static_cast<int>(std::min<uint64_t>(want / 2, INT_MAX / 4));
  return SetInt(fd, SO_SNDBUFFORCE, half, "SO_SNDBUFFORCE");
}

}  // namespace stasis::kinds::unix_socket
