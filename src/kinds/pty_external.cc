// The external terminal of a shell job (dump and restore --shell-job).
//
// A tree started from an interactive shell holds the shell's terminal: fds
// on a pty slave whose master (the terminal emulator, sshd, tmux) is outside
// the tree, or on a console; and its session, led by the shell, has that
// terminal as its controlling terminal. None of it can come back as it
// was: the master is not ours, and the session leader is not restored.
// With --shell-job the dump records these fds as "the external terminal"
// (one per image), and the restore opens, in their place, the terminal the
// restorer runs on (its stdin, which must be its controlling terminal). The
// tree is not a session of its own: it is restored into the restorer's
// session (the restore's init and its puppets inherit it), so that terminal
// is its controlling terminal, and into the restorer's process group, the
// job the shell knows: foreground or background as the shell runs the
// restore. termios and window size are not carried: they are the user's
// terminal's now.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

#include <set>

#include "kinds/pty.h"
#include "kinds/pty_internal.h"
#include "pty.pb.h"
#include "sys/proc.h"

namespace stasis::kinds::pty {
namespace {

constexpr unsigned kTtyMajor = 4;  // /dev/ttyN (virtual consoles), /dev/ttySN (serial)
constexpr uint32_t kKernelLargefile = 0100000;
constexpr uint32_t kCarried = O_ACCMODE | kKernelLargefile | O_NONBLOCK | O_APPEND | O_CLOEXEC;
constexpr uint32_t kSettable = O_NONBLOCK | O_APPEND;
constexpr std::string_view kKeyPrefix = "external-tty:";

bool IsDevTty(dev_t rdev) { return major(rdev) == 5 && minor(rdev) == 0; }

// The terminal `pid`'s /dev/tty stands for: its controlling terminal.
Result<dev_t> CttyOf(pid_t pid) {
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/stat", pid)));
  sys::proc::ProcStat st = STASIS_TRY(sys::proc::ParseStat(text));
  return static_cast<dev_t>(st.tty_nr);
}

// One external terminal per image: the restore has one terminal to give.
Status CheckOneTerminal(DumpContext& ctx, dev_t tty, const std::string& what) {
  std::string key = fmt::format("{}{}:{}", kKeyPrefix, major(tty), minor(tty));
  std::set<std::string>& records = ctx.State<DumpState>().records;
  auto it = records.lower_bound(std::string(kKeyPrefix));
  if (it != records.end() && it->starts_with(kKeyPrefix) && *it != key) {
    return Error::Unsupported(fmt::format(
        "{}: a second terminal outside the dumped tree ({} is the first); --shell-job carries "
        "one, which restore replaces with its own",
        what, it->substr(kKeyPrefix.size())));
  }
  records.insert(key);
  return Ok();
}

}  // namespace

bool IsExternalOnlyRdev(dev_t rdev) {
  return major(rdev) == kTtyMajor || IsDevTty(rdev) ||
         (major(rdev) == 5 && minor(rdev) == 1);  // /dev/console
}

Status DumpExternal(DumpContext& ctx, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  if (!ctx.policy.shell_job) {
    return Error::Unsupported(fmt::format(
        "{}: a terminal {} outside the dumped tree (such as the terminal the tree was started "
        "from); stasis dump --shell-job carries it, and restore --shell-job connects it to the "
        "restorer's terminal",
        what, IsSlaveRdev(in.st.st_rdev) ? "whose master is" : "that is"));
  }
  if (in.info.flags & ~kCarried) {
    return Error::Unsupported(
        fmt::format("{}: status flags {:#o} on a terminal", what, in.info.flags & ~kCarried));
  }
  winsize ws;
  if (ioctl(in.local.get(), TIOCGWINSZ, &ws) < 0) {
    if (errno == EIO) return Error::Unsupported(what + ": a hung-up terminal");
    return Error::Errno(what + ": TIOCGWINSZ");
  }
  dev_t tty = IsDevTty(in.st.st_rdev) ? STASIS_TRY(CttyOf(in.pid)) : in.st.st_rdev;
  STASIS_TRY(CheckOneTerminal(ctx, tty, what));
  image::ExternalTtyState state;
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  state.set_path(in.link);
  state.set_rdev_major(major(tty));
  state.set_rdev_minor(minor(tty));
  state.set_dev_tty(IsDevTty(in.st.st_rdev));
  file->mutable_state()->PackFrom(state);
  return Ok();
}

Result<sys::UniqueFd> RestoreExternal(RestoreContext& ctx, const image::ExternalTtyState& state) {
  std::string what = fmt::format("{} (the terminal outside the dumped tree)", state.path());
  if (!ctx.shell_job) {
    return Error::Unsupported(what +
                              ": the image was dumped with --shell-job; restore it with "
                              "--shell-job to give it this terminal");
  }
  // A new description of the restorer's terminal: of its stdin, or its
  // controlling terminal for /dev/tty (the same one, CheckShellJobTerminal).
  const char* path = state.dev_tty() ? "/dev/tty" : "/proc/self/fd/0";
  int flags = static_cast<int>(state.flags() & (O_ACCMODE | kKernelLargefile));
  sys::UniqueFd fd(open(path, flags | O_NOCTTY | O_CLOEXEC));
  if (!fd.valid()) return Error::Errno(fmt::format("{}: open {}", what, path));
  if (fcntl(fd.get(), F_SETFL, state.flags() & kSettable) < 0) {
    return Error::Errno(fmt::format("{}: F_SETFL {:#o}", what, state.flags()));
  }
  return fd;
}

Result<image::ShellJob> DumpShellJob(pid_t root, const std::vector<pid_t>& tree,
                                     const std::vector<image::File>& files) {
  image::ShellJob job;
  job.set_enabled(true);
  std::string text = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/stat", root)));
  sys::proc::ProcStat st = STASIS_TRY(sys::proc::ParseStat(text));
  bool session_inside = std::find(tree.begin(), tree.end(), st.session) != tree.end();
  if (session_inside || st.tty_nr == 0) return job;  // the pty kind has it, or no terminal
  dev_t ctty = static_cast<dev_t>(st.tty_nr);
  for (const image::File& f : files) {
    image::ExternalTtyState ext;
    if (f.kind() != kName || !f.state().UnpackTo(&ext)) continue;
    if (ext.rdev_major() != major(ctty) || ext.rdev_minor() != minor(ctty)) {
      return Error::Unsupported(fmt::format(
          "pid {}: its controlling terminal {}:{} is not the terminal outside the tree it holds "
          "fds on ({}); --shell-job carries one",
          root, major(ctty), minor(ctty), ext.path()));
    }
  }
  job.set_has_ctty(true);
  job.set_foreground(st.tpgid == st.pgrp);
  return job;
}

Status CheckShellJobTerminal() {
  pid_t sid = 0;
  if (!isatty(STDIN_FILENO)) {
    return Error::Invalid("restore --shell-job needs a terminal on its stdin");
  }
  if (ioctl(STDIN_FILENO, TIOCGSID, &sid) < 0 || sid != getsid(0)) {
    return Error::Invalid(
        "restore --shell-job needs its stdin to be its controlling terminal (run it from the "
        "interactive shell the job belongs to)");
  }
  return Ok();
}

}  // namespace stasis::kinds::pty
