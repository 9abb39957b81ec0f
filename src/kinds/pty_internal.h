// Parts of the pty kind (pty.h) shared by its files and its unit tests:
// the kernel termios2 layout, the unread-data model and how it is fed back,
// and the search of the tree for the other ends of a pair.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "kinds/context.h"
#include "pty.pb.h"

namespace stasis::kinds::pty {

// Kernel struct termios2 (include/uapi/asm-generic/termbits.h): glibc's
// struct termios has another layout, and <asm/termbits.h> cannot be
// included next to <termios.h>. The flag bits and c_cc indexes are the
// same as glibc's.
inline constexpr int kNcc = 19;
struct KernelTermios {
  uint32_t iflag = 0, oflag = 0, cflag = 0, lflag = 0;
  uint8_t line = 0;
  uint8_t cc[kNcc] = {};
  uint32_t ispeed = 0, ospeed = 0;
};
static_assert(sizeof(KernelTermios) == 44);
inline constexpr unsigned long kTcgets2 = 0x802c542a;  // _IOR('T', 0x2A, struct termios2)
inline constexpr unsigned long kTcsets2 = 0x402c542b;  // _IOW('T', 0x2B, struct termios2)

inline constexpr unsigned kPtmxMajor = 5, kPtmxMinor = 2;
inline constexpr unsigned kSlaveMajorFirst = 136, kSlaveMajorLast = 143;  // UNIX98_PTY_SLAVE_MAJOR
inline constexpr size_t kTtyBufSize = 4096;                               // N_TTY_BUF_SIZE

image::Termios ToProto(const KernelTermios& t);
Result<KernelTermios> FromProto(const image::Termios& t);

// Unread data of a pair. Input is what reads of the slave would return;
// output is what reads of the master would return.
struct Queues {
  std::vector<image::PtyInputLine> lines;  // canonical mode only
  std::string tail;
  std::string output;
  bool empty() const { return lines.empty() && tail.empty() && output.empty(); }
};

// Whether `data`, one canonical read() of the slave, ends with an
// end-of-line character under t, rather than having been ended by VEOF.
bool EndsWithEol(const KernelTermios& t, std::string_view data);

// The termios under which a line (or the tail, when line is null) is fed
// back into the slave with TIOCSTI, so the line discipline stores exactly
// the same bytes with the same line ends: no echo, signals, input mapping
// or output processing; every special character off except the one ending
// this line. *feed gets the bytes to inject. IXON and its characters are
// left as they were: changing them would queue a status byte for a
// packet-mode reader. Refuses data it cannot feed faithfully (a newline
// escaped with VLNEXT inside a line, a flow-control character).
Status FeedPlan(const KernelTermios& t, const image::PtyInputLine* line, std::string_view tail,
                KernelTermios* w, std::string* feed);

// The dump side: reads both queues out of the pair (the task is frozen) and
// puts them back as they were. The restore side: puts them into a new pair.
// `master` is the task's own description; `slave` a description of our own
// (O_NONBLOCK). Both end with the slave's termios at t.
Result<Queues> DrainQueues(int master, int slave, const KernelTermios& t, bool packet,
                           const std::string& what);
Status FeedQueues(int slave, const KernelTermios& t, const Queues& q, const std::string& what);

// Where the dump finds the rest of a pair: the tree's fds on it.
struct FdRef {
  pid_t pid;  // host pid
  int fd;
};
// "tty-index" of a /dev/ptmx fd's fdinfo.
std::optional<uint32_t> TtyIndex(const sys::proc::FdInfo& info);
bool IsMasterRdev(dev_t rdev);
bool IsSlaveRdev(dev_t rdev);
uint32_t SlaveIndex(dev_t rdev);
// Every fd of the tree on the slave with this devpts st_dev and st_rdev.
Result<std::vector<FdRef>> SlaveFds(const DumpContext& ctx, dev_t devpts, dev_t rdev);
// Every fd of the tree on a master whose tty-index is `index`.
Result<std::vector<FdRef>> MasterFds(const DumpContext& ctx, uint32_t index);

// The controlling-terminal state of a pair in the tree's PID namespace,
// from the dumper's TIOCGSID/TIOCGPGRP on the master (host numbers), with
// the checks that the restore can rebuild it (pty_job.cc).
Result<image::PtyJob> DumpJob(const DumpContext& ctx, int master, const std::vector<FdRef>& slaves,
                              const std::string& what);

// The external terminal of a shell job (pty_external.cc).
// Consoles and /dev/tty: terminals that are always outside the tree.
bool IsExternalOnlyRdev(dev_t rdev);
// A terminal outside the tree: refused without --shell-job (saying so),
// else recorded as an ExternalTtyState.
Status DumpExternal(DumpContext& ctx, const FdDumpInput& in, image::File* file);
Result<sys::UniqueFd> RestoreExternal(RestoreContext& ctx, const image::ExternalTtyState& state);

// What the pty files of one dump tell each other (DumpContext::State).
struct DumpState {
  // A pair's job state, from its master's dump to its slaves' dumps; its
  // entry also says the master is in the image (JobRecord), and
  // "external-tty:<major>:<minor>" marks the one external terminal.
  std::set<std::string> records;
};

// "pty:<dev>:<ino>:<session>:<foreground>"
std::string JobRecord(uint64_t dev, uint64_t ino, const image::PtyJob& job);
std::optional<image::PtyJob> FindJobRecord(const std::set<std::string>& records, uint64_t dev,
                                           uint64_t ino);

}  // namespace stasis::kinds::pty
