// sock_diag for AF_UNIX (net/unix/diag.c, Linux 3.3+): one NLM_F_DUMP
// request lists every unix socket of the caller's network namespace with
// its name, peer, the clients waiting in a listener's backlog, queue lengths
// and shutdown state. Sockets of other network namespaces are not listed.
#include <fmt/format.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstring>

#include "kinds/unix_socket_internal.h"

namespace stasis::kinds::unix_socket {
namespace {

constexpr uint32_t kShow =
    UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
// UDIAG_SHOW_SHUTDOWN is not a request bit: the kernel always adds
// UNIX_DIAG_SHUTDOWN (3.10+).
constexpr size_t kReplyBuffer = 64 << 10;

template <typename T>
T Load(const char* p) {
  T value;
  std::memcpy(&value, p, sizeof value);
  return value;
}

Status ParseAttribute(uint16_t type, std::string_view value, DiagEntry* e) {
  auto need = [&](size_t n) -> Status {
    if (value.size() < n) {
      return Error::Corrupt(
          fmt::format("unix_diag attribute {}: {} bytes, want {}", type, value.size(), n));
    }
    return Ok();
  };
  switch (type) {
    case UNIX_DIAG_NAME: {
      sockaddr_un sa = {};
      size_t n = std::min(value.size(), sizeof sa.sun_path);
      std::memcpy(sa.sun_path, value.data(), n);
      e->name = NameFromSockaddr(sa, static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n));
      break;
    }
    case UNIX_DIAG_VFS:
      STASIS_TRY(need(sizeof(unix_diag_vfs)));
      e->has_vfs = true;
      e->vfs_ino = Load<unix_diag_vfs>(value.data()).udiag_vfs_ino;
      e->vfs_dev = Load<unix_diag_vfs>(value.data()).udiag_vfs_dev;
      break;
    case UNIX_DIAG_PEER:
      STASIS_TRY(need(sizeof(uint32_t)));
      e->peer = Load<uint32_t>(value.data());
      break;
    case UNIX_DIAG_ICONS:
      for (size_t i = 0; i + sizeof(uint32_t) <= value.size(); i += sizeof(uint32_t)) {
        e->icons.push_back(Load<uint32_t>(value.data() + i));
      }
      break;
    case UNIX_DIAG_RQLEN:
      STASIS_TRY(need(sizeof(unix_diag_rqlen)));
      e->rqueue = Load<unix_diag_rqlen>(value.data()).udiag_rqueue;
      e->wqueue = Load<unix_diag_rqlen>(value.data()).udiag_wqueue;
      break;
    case UNIX_DIAG_SHUTDOWN:
      STASIS_TRY(need(1));
      e->shutdown = static_cast<uint8_t>(value[0]);
      break;
    default:
      break;  // MEMINFO, UID and later additions
  }
  return Ok();
}

Result<sys::UniqueFd> SendRequest() {
  sys::UniqueFd nl(socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl.valid()) return Error::Errno("socket(NETLINK_SOCK_DIAG)");
  struct {
    nlmsghdr nlh;
    unix_diag_req req;
  } msg = {};
  msg.nlh.nlmsg_len = sizeof msg;
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  msg.nlh.nlmsg_seq = 1;
  msg.req.sdiag_family = AF_UNIX;
  msg.req.udiag_states = ~0u;
  msg.req.udiag_show = kShow;
  sockaddr_nl kernel = {};
  kernel.nl_family = AF_NETLINK;
  if (sendto(nl.get(), &msg, sizeof msg, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) <
      0) {
    return Error::Errno("sock_diag: send the AF_UNIX dump request");
  }
  return nl;
}

Result<DiagTable> DumpOnce() {
  sys::UniqueFd nl = STASIS_TRY(SendRequest());
  std::string buf(kReplyBuffer, '\0');
  DiagTable table;
  bool done = false;
  while (!done) {
    ssize_t n = recv(nl.get(), buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::Errno("sock_diag: receive the AF_UNIX dump");
    if (n == 0) return Error(ErrorCode::kFailed, "sock_diag: the dump ended without NLMSG_DONE");
    STASIS_TRY(ParseDiagReply(std::string_view(buf.data(), static_cast<size_t>(n)), &table, &done));
  }
  return table;
}

}  // namespace

Result<DiagEntry> ParseDiagMessage(std::string_view payload) {
  if (payload.size() < sizeof(unix_diag_msg)) {
    return Error::Corrupt(fmt::format("unix_diag_msg of {} bytes", payload.size()));
  }
  unix_diag_msg msg = Load<unix_diag_msg>(payload.data());
  DiagEntry e;
  e.ino = msg.udiag_ino;
  e.type = msg.udiag_type;
  e.state = msg.udiag_state;
  size_t off = NLMSG_ALIGN(sizeof(unix_diag_msg));
  while (off + sizeof(nlattr) <= payload.size()) {
    nlattr attr = Load<nlattr>(payload.data() + off);
    if (attr.nla_len < sizeof(nlattr) || off + attr.nla_len > payload.size()) {
      return Error::Corrupt(fmt::format("unix_diag socket {}: attribute {} of length {} at {}",
                                        e.ino, attr.nla_type, attr.nla_len, off));
    }
    std::string_view value = payload.substr(off + NLA_HDRLEN, attr.nla_len - NLA_HDRLEN);
    STASIS_TRY_CTX(ParseAttribute(attr.nla_type & NLA_TYPE_MASK, value, &e),
                   fmt::format("unix_diag socket {}", e.ino));
    off += NLA_ALIGN(attr.nla_len);
  }
  return e;
}

Status ParseDiagReply(std::string_view buf, DiagTable* table, bool* done) {
  size_t off = 0;
  while (off + sizeof(nlmsghdr) <= buf.size()) {
    nlmsghdr h = Load<nlmsghdr>(buf.data() + off);
    if (h.nlmsg_len < sizeof(nlmsghdr) || off + h.nlmsg_len > buf.size()) {
      return Error::Corrupt(fmt::format("netlink message of length {} at {}", h.nlmsg_len, off));
    }
    std::string_view payload = buf.substr(off + NLMSG_HDRLEN, h.nlmsg_len - NLMSG_HDRLEN);
    if (h.nlmsg_type == NLMSG_DONE) {
      *done = true;
      return Ok();
    }
    if (h.nlmsg_type == NLMSG_ERROR) {
      if (payload.size() < sizeof(nlmsgerr)) return Error::Corrupt("short NLMSG_ERROR");
      return Error::FromErrno("sock_diag AF_UNIX dump", -Load<nlmsgerr>(payload.data()).error);
    }
    if (h.nlmsg_flags & NLM_F_DUMP_INTR) {
      // The socket table changed under the dump: it may have missed some.
      return Error::FromErrno("sock_diag AF_UNIX dump interrupted", EINTR);
    }
    if (h.nlmsg_type == SOCK_DIAG_BY_FAMILY) {
      DiagEntry e = STASIS_TRY(ParseDiagMessage(payload));
      uint64_t ino = e.ino;
      (*table)[ino] = std::move(e);
    }
    off += NLMSG_ALIGN(h.nlmsg_len);
  }
  return Ok();
}

Result<DiagTable> DumpDiagTable() {
  for (int attempt = 1;; ++attempt) {
    Result<DiagTable> table = DumpOnce();
    if (table.ok() || table.error().errnum() != EINTR || attempt == 3) return table;
  }
}

bool FileInUse(const DiagTable& table, dev_t dev, ino_t ino) {
  for (const auto& [sk, e] : table) {
    if (!e.has_vfs || e.vfs_ino != static_cast<uint32_t>(ino)) continue;
    // The superblock's s_dev as the kernel holds it: MAJOR(dev) << 20 | MINOR
    // (include/linux/kdev_t.h), not the encoding stat() uses.
    unsigned major_number = e.vfs_dev >> 20;
    unsigned minor_number = e.vfs_dev & 0xfffff;
    if (major_number == major(dev) && minor_number == minor(dev)) return true;
  }
  return false;
}

}  // namespace stasis::kinds::unix_socket
