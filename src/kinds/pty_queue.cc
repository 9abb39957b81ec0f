// The unread data of a pty pair, both ways, and the termios it is read and
// fed back under. A tty queue cannot be peeked: the dump reads it out of
// the frozen pair and feeds it back at once, exactly as the restore feeds a
// new pair.
//
// Input (master -> slave) sits in the slave's line discipline after input
// processing. It is read from a description of the slave of our own:
// canonical mode returns one line per read() (with its \n, VEOL or VEOL2;
// a line ended by VEOF comes without it, an empty one as a 0-byte read),
// then ICANON is cleared for a moment to read the unfinished line. It is
// fed back with TIOCSTI on the slave, which runs the line discipline
// synchronously (a write to the master is processed later by a work item,
// under whatever termios is current then); the termios while feeding turns
// off echo, signals and input mapping, so the bytes are stored as they
// were read, and in canonical mode the same characters end the same lines.
//
// Output (slave -> master) sits in the master's line discipline, which is
// always raw, after the slave's output processing. It is read from the
// task's master description and written back through the slave with OPOST
// off, so it is not processed twice.
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "kinds/pty_internal.h"

namespace stasis::kinds::pty {
namespace {

// A queue is at most N_TTY_BUF_SIZE in the line discipline plus what the
// flip buffers hold; more means something else keeps writing.
constexpr size_t kMaxQueue = 64 * 1024;
constexpr int kWriteTimeoutMs = 2000;

Status SetTermios(int fd, const KernelTermios& t, const std::string& what) {
  if (ioctl(fd, kTcsets2, &t) < 0) return Error::Errno(what + ": TCSETS2");
  return Ok();
}

// Canonical mode as the line discipline sees it (EXTPROC leaves editing to
// the other side; the caller refuses data in that mode).
bool Canonical(const KernelTermios& t) { return (t.lflag & ICANON) && !(t.lflag & EXTPROC); }

Result<std::string> DrainMaster(int master, bool packet, const std::string& what) {
  std::string out;
  char buf[kTtyBufSize + 1];
  for (int spins = 0; spins < 1000; ++spins) {
    // poll() runs the pending flip-buffer work when nothing is readable,
    // so "not readable" means empty.
    pollfd p = {master, POLLIN, 0};
    if (poll(&p, 1, 0) < 0) {
      if (errno == EINTR) continue;
      return Error::Errno(what + ": poll master");
    }
    if (!(p.revents & POLLIN)) return out;
    ssize_t n = read(master, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0 && errno == EIO) return out;  // slave closed and nothing left
    if (n < 0) return Error::Errno(what + ": read master");
    if (n == 0) return out;
    size_t skip = 0;
    if (packet) {
      // Every packet-mode read starts with a header byte; the caller made
      // sure no status byte (header != TIOCPKT_DATA) was pending.
      if (buf[0] != TIOCPKT_DATA) {
        return Error(ErrorCode::kFailed,
                     fmt::format("{}: packet-mode status {:#x} appeared while dumping", what,
                                 static_cast<unsigned char>(buf[0])));
      }
      skip = 1;
    }
    out.append(buf + skip, static_cast<size_t>(n) - skip);
    if (out.size() > kMaxQueue) {
      return Error(ErrorCode::kFailed, what + ": output queue keeps growing while dumping");
    }
  }
  return Error(ErrorCode::kFailed, what + ": output queue does not drain");
}

// Reads the slave until nothing is left; in canonical mode each read is a
// line. A 0-byte read is an empty VEOF line (canonical) or the end (VMIN 0).
Status DrainSlave(int slave, bool lines, Queues* q, const std::string& what) {
  char buf[kTtyBufSize + 1];
  size_t total = 0;
  for (int reads = 0; reads < static_cast<int>(kTtyBufSize) + 2; ++reads) {
    ssize_t n = read(slave, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return Ok();
    if (n < 0) return Error::Errno(what + ": read slave");
    if (n == 0 && !lines) return Ok();
    total += static_cast<size_t>(n);
    if (total > kMaxQueue) return Error(ErrorCode::kFailed, what + ": input queue keeps growing");
    if (lines) {
      image::PtyInputLine& line = q->lines.emplace_back();
      line.set_data(buf, static_cast<size_t>(n));
      line.set_eof(false);  // set by the caller, which knows the termios
    } else {
      q->tail.append(buf, static_cast<size_t>(n));
    }
  }
  return Error(ErrorCode::kFailed, what + ": input queue does not drain");
}

Status Inject(int slave, std::string_view bytes, const std::string& what) {
  for (char c : bytes) {
    // CAP_SYS_ADMIN, or dev.tty.legacy_tiocsti=1 and our own ctty.
    if (ioctl(slave, TIOCSTI, &c) < 0) return Error::Errno(what + ": TIOCSTI");
  }
  return Ok();
}

Status WriteAll(int slave, std::string_view data, const std::string& what) {
  while (!data.empty()) {
    pollfd p = {slave, POLLOUT, 0};
    int r = poll(&p, 1, kWriteTimeoutMs);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Error::Errno(what + ": poll slave");
    if (r == 0)
      return Error(ErrorCode::kFailed, what + ": output queue does not take its data back");
    ssize_t n = write(slave, data.data(), data.size());
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return Error::Errno(what + ": write slave");
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Ok();
}

}  // namespace

image::Termios ToProto(const KernelTermios& t) {
  image::Termios out;
  out.set_iflag(t.iflag);
  out.set_oflag(t.oflag);
  out.set_cflag(t.cflag);
  out.set_lflag(t.lflag);
  out.set_line(t.line);
  out.set_cc(reinterpret_cast<const char*>(t.cc), kNcc);
  out.set_ispeed(t.ispeed);
  out.set_ospeed(t.ospeed);
  return out;
}

Result<KernelTermios> FromProto(const image::Termios& t) {
  if (t.cc().size() != kNcc) {
    return Error::Corrupt(
        fmt::format("termios has {} control characters, not {}", t.cc().size(), kNcc));
  }
  if (t.line() > 0xff) return Error::Corrupt(fmt::format("termios line {}", t.line()));
  KernelTermios out;
  out.iflag = t.iflag();
  out.oflag = t.oflag();
  out.cflag = t.cflag();
  out.lflag = t.lflag();
  out.line = static_cast<uint8_t>(t.line());
  memcpy(out.cc, t.cc().data(), kNcc);
  out.ispeed = t.ispeed();
  out.ospeed = t.ospeed();
  return out;
}

bool EndsWithEol(const KernelTermios& t, std::string_view data) {
  if (data.empty()) return false;
  uint8_t last = static_cast<uint8_t>(data.back());
  // A c_cc entry of 0 (_POSIX_VDISABLE) is off: n_tty clears NUL from its
  // map of special characters.
  return last == '\n' || (t.cc[VEOL] != 0 && last == t.cc[VEOL]) ||
         ((t.lflag & IEXTEN) && t.cc[VEOL2] != 0 && last == t.cc[VEOL2]);
}

Status FeedPlan(const KernelTermios& t, const image::PtyInputLine* line, std::string_view tail,
                KernelTermios* w, std::string* feed) {
  bool canon = Canonical(t);
  // Keeping IXON as it was avoids a flow-change status byte for a
  // packet-mode reader; otherwise it goes, and ^S/^Q are plain bytes.
  bool ixon = t.iflag & IXON;
  auto flow = [&](uint8_t c) { return ixon && c != 0 && (c == t.cc[VSTART] || c == t.cc[VSTOP]); };
  *w = t;
  w->lflag &= ~(ECHO | ECHOE | ECHOK | ECHONL | ECHOCTL | ECHOPRT | ECHOKE | ISIG | XCASE);
  w->iflag &= ~(IGNBRK | BRKINT | IGNPAR | PARMRK | INPCK | ISTRIP | INLCR | IGNCR | ICRNL | IUCLC |
                IMAXBEL);
  if (!ixon) w->iflag &= ~(IXON | IXOFF | IXANY);
  w->oflag &= ~OPOST;
  for (int i : {VINTR, VQUIT, VERASE, VKILL, VEOF, VEOL, VEOL2, VWERASE, VREPRINT, VLNEXT, VSUSP,
                VDISCARD, VSWTC}) {
    w->cc[i] = 0;
  }
  std::string_view body = tail;
  uint8_t end = 0;  // the character that ends this line, fed unescaped
  if (line != nullptr) {
    if (!canon) return Error::Corrupt("input lines for a non-canonical terminal");
    body = line->data();
    if (!line->eof()) {
      if (body.empty()) return Error::Corrupt("an input line without its end-of-line character");
      end = static_cast<uint8_t>(body.back());
      body.remove_suffix(1);
      if (end != '\n') w->cc[VEOL] = end;
    }
  }
  // A control character for a job, other than those already in use.
  auto pick = [&](uint8_t preferred, uint8_t taken) {
    uint8_t c = preferred;
    while (c == '\n' || c == end || c == taken || flow(c)) c = static_cast<uint8_t>(c % 31 + 1);
    return c;
  };
  uint8_t lnext = 0;
  if (canon) {
    // VLNEXT escapes every byte that would otherwise end a line or act as
    // flow control: a newline typed after ^V stays inside its line.
    lnext = pick(0x16, 0);  // ^V
    w->lflag |= IEXTEN;
    w->cc[VLNEXT] = lnext;
    if (line != nullptr && line->eof()) {
      end = pick(0x04, lnext);  // ^D
      w->cc[VEOF] = end;
    }
  }
  auto special = [&](uint8_t c) {
    if (flow(c)) return true;
    return canon && (c == '\n' || c == lnext || (end != 0 && c == end));
  };
  feed->clear();
  for (char ch : body) {
    uint8_t c = static_cast<uint8_t>(ch);
    if (special(c)) {
      if (!canon) {
        return Error::Unsupported(fmt::format(
            "the non-canonical input queue holds the flow-control character {:#x} while IXON "
            "is on",
            c));
      }
      feed->push_back(static_cast<char>(lnext));
    }
    feed->push_back(ch);
  }
  if (line != nullptr) feed->push_back(static_cast<char>(end));
  return Ok();
}

Result<Queues> DrainQueues(int master, int slave, const KernelTermios& t, bool packet,
                           const std::string& what) {
  Queues q;
  Status read_status = [&]() -> Status {
    q.output = STASIS_TRY(DrainMaster(master, packet, what));
    if (!Canonical(t)) return DrainSlave(slave, false, &q, what);
    STASIS_TRY(DrainSlave(slave, true, &q, what));
    for (image::PtyInputLine& line : q.lines) line.set_eof(!EndsWithEol(t, line.data()));
    // The unfinished line is only readable outside canonical mode; the
    // switch drops no byte, and the queue is empty when ICANON comes back.
    KernelTermios raw = t;
    raw.lflag &= ~ICANON;
    STASIS_TRY(SetTermios(slave, raw, what));
    return DrainSlave(slave, false, &q, what);
  }();
  // Whatever was read goes back, also when reading failed half-way.
  Status fed = FeedQueues(slave, t, q, what + ": feeding back");
  if (!read_status.ok()) return std::move(read_status).error();
  if (!fed.ok()) return std::move(fed).error();
  return q;
}

Status FeedQueues(int slave, const KernelTermios& t, const Queues& q, const std::string& what) {
  KernelTermios w;
  std::string feed;
  Status exact = Ok();  // the first refusal; the rest is still fed as well as it can be
  for (const image::PtyInputLine& line : q.lines) {
    Status plan = FeedPlan(t, &line, {}, &w, &feed);
    if (!plan.ok()) return std::move(plan).error().Context(what);
    STASIS_TRY(SetTermios(slave, w, what));
    STASIS_TRY(Inject(slave, feed, what));
  }
  Status plan = FeedPlan(t, nullptr, q.tail, &w, &feed);
  if (!plan.ok()) {
    if (plan.error().code() != ErrorCode::kUnsupported) return std::move(plan).error();
    exact = std::move(plan).error().Context(what);
    feed = q.tail;  // fed raw: the flow-control bytes act as such
  }
  if (!q.empty()) {
    STASIS_TRY(SetTermios(slave, w, what));
    STASIS_TRY(Inject(slave, feed, what));
    STASIS_TRY(WriteAll(slave, q.output, what));
  }
  STASIS_TRY(SetTermios(slave, t, what));
  return exact;
}

}  // namespace stasis::kinds::pty
