// stasis: checkpoint and restore running Linux processes.
#include <fmt/format.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>

#include "checkpoint/dump.h"
#include "cli/console.h"
#include "cli/migrate_cmds.h"
#include "cli/session_cmds.h"
#include "cli/session_link.h"
#include "image/endpoint.h"
#include "image/inspect.h"
#include "image/stream.h"
#include "kinds/registry.h"
#include "restore/restore.h"
#include "restore/spawn.h"
#include "sys/features.h"
#include "sys/proc.h"
#include "sys/unique_fd.h"

namespace {

using stasis::Error;

using stasis::cli::CliEnv;
using stasis::cli::Fail;

constexpr char kStdio[] = "-";

// A pipe's default 64 KiB makes the image cross it in many small steps,
// each a pair of context switches; 1 MiB (the default pipe-max-size) lets
// the dump's large writes through whole. Not a pipe, or not allowed: as is.
void WidenPipe(int fd) { (void)fcntl(fd, F_SETPIPE_SZ, 1 << 20); }

// -D DIR, or -o - for stdout (never a terminal: an image is binary).
stasis::Result<std::unique_ptr<stasis::image::ImageSink>> OpenImageSink(const std::string& dir,
                                                                        const std::string& out) {
  if (!dir.empty()) {
    return std::unique_ptr<stasis::image::ImageSink>(
        STASIS_TRY(stasis::image::DirectorySink::Create(dir)));
  }
  if (out != kStdio) {
    return Error::Invalid("-o takes '-' (stdout); write an image to a directory with -D DIR");
  }
  if (isatty(STDOUT_FILENO)) return Error::Invalid("refusing to write an image to a terminal");
  WidenPipe(STDOUT_FILENO);
  // A reader that goes away must fail the write (EPIPE), not kill the
  // dumper: dying with the tree frozen would skip what puts it back (its
  // sockets out of repair mode, the network lock lifted).
  signal(SIGPIPE, SIG_IGN);
  return std::unique_ptr<stasis::image::ImageSink>(
      new stasis::image::StreamSink(STDOUT_FILENO, "stdout"));
}

int RunDump(const stasis::sys::Env& env, const stasis::checkpoint::DumpOptions& options,
            stasis::image::ImageSink& sink) {
  auto stats = stasis::checkpoint::Dump(env, options, sink);
  if (!stats.ok()) return Fail(stats.error());
  fmt::print(stderr,
             "stasis: dumped pid {} to {}: {:.1f} MiB resident, image {:.1f} MiB, "
             "{:.1f} ms total, frozen {:.1f} ms{}\n",
             options.pid, sink.Describe(), stats->resident_bytes / 1048576.0,
             stats->image_bytes / 1048576.0, stats->total_ms, stats->frozen_ms,
             options.leave_running
                 ? fmt::format(" (left running; pages: {} pre-copied, {} read while frozen)",
                               stats->precopy_pages_kept, stats->precopy_pages_read)
                 : "");
  return 0;
}

// restore --shell-job: the tree is a job in our process group, which is
// the one the shell knows; we stay, as that job, until the tree ends, and
// end as it did. ^C and ^\ reach the tree directly (it is in the group);
// ^Z stops us with it, and fg continues both.
int WaitForJob(const stasis::restore::RestoreResult& result) {
  std::fflush(stdout);
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  // The init of the tree's PID namespace ends with the root's status; with
  // --pid-ns=host the root is our own child.
  pid_t child = result.init_host_pid != 0 ? result.init_host_pid : result.host_pid;
  int status = 0;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) return Fail(stasis::Error::Errno("wait for the restored job"));
  }
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

// -D DIR, or -i - for stdin. A stream is read to its end first (and
// checked whole) here rather than in the restore, so that stdin can be
// let go before anything is created: the processes the restore forks
// would otherwise inherit the stream.
stasis::Result<std::unique_ptr<stasis::image::Source>> OpenImageSource(
    const stasis::sys::Env& env, const std::string& dir, const std::string& in,
    const std::string& spool_dir) {
  using stasis::image::Source;
  if (!dir.empty()) {
    return std::unique_ptr<Source>(
        STASIS_TRY(stasis::image::MappedFileSource::Open(stasis::image::ImagePath(dir))));
  }
  if (in != kStdio) {
    return Error::Invalid("-i takes '-' (stdin); read an image from a directory with -D DIR");
  }
  if (isatty(STDIN_FILENO)) return Error::Invalid("refusing to read an image from a terminal");
  WidenPipe(STDIN_FILENO);
  env.Report("read");
  stasis::image::FdSource stdin_source(STDIN_FILENO);
  auto spooled = STASIS_TRY(stasis::image::SpoolImage(
      stdin_source, spool_dir, [&env](uint64_t bytes) { env.Report("read", bytes); }));
  stasis::sys::UniqueFd null_fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!null_fd.valid()) return Error::Errno("open /dev/null");
  if (dup2(null_fd.get(), STDIN_FILENO) < 0) return Error::Errno("dup2 /dev/null onto stdin");
  return std::unique_ptr<Source>(std::move(spooled));
}

std::string SpoolDir() {
  const char* tmp = getenv("TMPDIR");
  return tmp != nullptr && *tmp != '\0' ? tmp : "/var/tmp";
}

int RunRestore(const stasis::sys::Env& env, const stasis::restore::RestoreOptions& options,
               const std::string& dir, const std::string& in) {
  if (!in.empty() && options.shell_job) {
    return Fail(Error::Invalid(
        "restore -i - --shell-job: stdin cannot be both the image and the job's terminal; "
        "restore a --shell-job image from a directory (-D DIR)"));
  }
  auto read_start = std::chrono::steady_clock::now();
  auto source = OpenImageSource(env, dir, in, options.spool_dir);
  if (!source.ok()) return Fail(source.error());
  std::chrono::duration<double, std::milli> read = std::chrono::steady_clock::now() - read_start;
  auto result = stasis::restore::Restore(
      env, options, std::shared_ptr<stasis::image::Source>(std::move(source).value()));
  if (!result.ok()) return Fail(result.error());
  // A stream's time to arrive whole is its writer's as much as ours: said
  // apart, so the restore's own figure compares with a directory's.
  std::string from = dir.empty() ? fmt::format("stdin (whole after {:.1f} ms)", read.count()) : dir;
  fmt::print(stderr, "stasis: restored pid {} (host pid {}) from {} in {:.1f} ms\n", result->pid,
             result->host_pid, from, result->total_ms);
  fmt::print("{}\n", result->host_pid);
  if (result->pager) {
    // restore --lazy: the tree runs; its pages are served from here until
    // every one is in, and only then may we go.
    std::fflush(stdout);
    stasis::Status done = result->pager->Wait();
    if (!done.ok()) return Fail(done.error());
    done = stasis::restore::PagesIn(std::move(result->page_guard));
    if (!done.ok()) return Fail(done.error());
    stasis::mem::LazyStats lazy = result->pager->stats();
    fmt::print(stderr, "stasis: every page is in: {} faults, {} zero pages, {} pages pushed\n",
               lazy.faults, lazy.zero_faults, lazy.pushed_pages);
  }
  if (result->shell_job) return WaitForJob(*result);
  return 0;
}

// The whole image: DIR's file, or stdin for "-".
stasis::Result<std::string> ReadImage(const std::string& dir) {
  if (dir != kStdio) return stasis::sys::proc::ReadFile(stasis::image::ImagePath(dir));
  std::string data;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::Errno("read image from stdin");
    if (n == 0) return data;
    data.append(buf, static_cast<size_t>(n));
  }
}

// Decodes every record and re-encodes it: the bytes must come out the same.
int RunVerify(const std::string& dir) {
  std::string path = dir == kStdio ? "stdin" : stasis::image::ImagePath(dir);
  auto original = ReadImage(dir);
  if (!original.ok()) return Fail(original.error());
  stasis::image::MemorySource source(*original);
  stasis::image::StringSink copy;
  stasis::Status s = stasis::image::ReencodeImage(source, copy);
  if (!s.ok()) return Fail(s.error());
  if (original.value() != copy.data()) {
    return Fail(stasis::Error::Corrupt(path + ": re-encoding the image changed its bytes"));
  }
  fmt::print("{}: {} bytes decode and re-encode identically\n", path, copy.data().size());
  return 0;
}

int RunInspect(const std::string& dir, bool pages) {
  std::unique_ptr<stasis::image::Source> source;
  if (dir == kStdio) {
    source = std::make_unique<stasis::image::FdSource>(STDIN_FILENO);
  } else {
    auto file = stasis::image::FdSource::OpenFile(stasis::image::ImagePath(dir));
    if (!file.ok()) return Fail(file.error());
    source = std::move(file).value();
  }
  auto json = stasis::image::InspectImage(*source, pages);
  if (!json.ok()) return Fail(json.error());
  fmt::print("{}\n", json->dump(2));
  return 0;
}

int RunCheck() {
  stasis::sys::KernelFeatures features = stasis::sys::KernelFeatures::Probe();
  for (const stasis::sys::Feature& f : features.all()) {
    fmt::print("{:<24} {:<8} {}{}\n", f.name, f.present ? "yes" : "NO", f.detail,
               f.required ? "" : " (optional)");
  }
  bool ok = features.AllRequiredPresent();
  fmt::print("{}\n", ok ? "Looks good." : "Some required features are missing.");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"stasis: checkpoint, restore and migrate running Linux processes"};
  app.require_subcommand(1);

  stasis::checkpoint::DumpOptions dump;
  CLI::App* dump_cmd = app.add_subcommand("dump", "Freeze a process and write its image");
  std::string dump_session, state_dir;
  CLI::Option* tree_opt = dump_cmd->add_option("-t,--tree", dump.pid,
                                               "PID of the process to dump, with its descendants");
  dump_cmd->add_option("--session", dump_session, "Dump the session started by `stasis run`")
      ->excludes(tree_opt);
  dump_cmd->add_option("--state-dir", state_dir,
                       "Where sessions are recorded (default /run/stasis/sessions)");
  std::string dump_dir, dump_out;
  CLI::Option* dump_dir_opt =
      dump_cmd->add_option("-D,--images-dir", dump_dir, "Directory for the image (created)");
  CLI::Option* dump_out_opt = dump_cmd->add_option(
      "-o,--output", dump_out,
      "-: write the image to stdout (a pipe or a socket, never a terminal) instead of a "
      "directory; the tree is killed once the stream is complete");
  dump_dir_opt->excludes(dump_out_opt);
  bool progress = false;
  constexpr char kProgressHelp[] =
      "Print the phases and the page bytes moved on stderr as the operation goes";
  dump_cmd->add_flag("--progress", progress, kProgressHelp);
  bool tcp_established = false;  // CRIU's flag; Stasis always carries them
  dump_cmd->add_flag("--tcp-established", tcp_established,
                     "Accepted for CRIU users: established TCP connections are always carried "
                     "(with TCP repair, and a network lock for outside peers)");
  dump_cmd->add_flag("-R,--leave-running", dump.leave_running,
                     "Let the process go on after the dump instead of killing it");
  std::string external_unix = "refuse";
  dump_cmd
      ->add_option("--external-unix", external_unix,
                   "A unix socket whose peer is outside the tree: refuse (default) the dump, or "
                   "close: carry it as if that peer had closed (reads give EOF, writes EPIPE or "
                   "ECONNREFUSED)")
      ->check(CLI::IsMember({"refuse", "close"}));
  dump_cmd->add_flag("--shell-job", dump.policy.shell_job,
                     "Allow a terminal whose master is outside the tree (the shell's): restore "
                     "--shell-job connects it to the restorer's terminal");

  stasis::restore::RestoreOptions restore;
  std::string pid_ns = "new";
  CLI::App* restore_cmd = app.add_subcommand(
      "restore", "Bring a process back from its image; prints its host PID once it runs");
  std::string restore_dir, restore_in;
  CLI::Option* restore_dir_opt =
      restore_cmd->add_option("-D,--images-dir", restore_dir, "Directory holding the image");
  restore_cmd
      ->add_option("-i,--input", restore_in,
                   "-: read the image from stdin (read whole and checked before anything is "
                   "restored)")
      ->excludes(restore_dir_opt);
  restore_cmd->add_flag("--progress", progress, kProgressHelp);
  restore_cmd
      ->add_option("--pid-ns", pid_ns,
                   "new: a fresh PID namespace where the task keeps its PID (default); "
                   "host: this namespace, if the PID is free")
      ->check(CLI::IsMember({"new", "host"}));
  restore_cmd->add_flag("--lazy", restore.lazy,
                        "Let the tree run before its private anonymous pages are written: "
                        "they are served on fault and pushed in the background; the command "
                        "returns once every page is in");
  restore_cmd->add_flag("--tcp-established", tcp_established, "Accepted for CRIU users: always on");
  restore_cmd->add_flag("--shell-job", restore.shell_job,
                        "The image was dumped with --shell-job: give its terminal fds this "
                        "process's terminal (stdin), make the tree a job on it in this "
                        "process's group, and wait for it to end (exit with its status)");
  std::string restore_name;
  restore_cmd->add_option("--name", restore_name,
                          "Make the restored tree a session of this name (default: the dumped "
                          "session's name, if it was one)");
  restore_cmd->add_option("--state-dir", state_dir, "Where sessions are recorded");

  std::string inspect_dir;
  bool inspect_pages = false;
  CLI::App* inspect_cmd = app.add_subcommand("inspect", "Print an image as JSON");
  inspect_cmd->add_option("dir", inspect_dir, "Image directory, or - for an image on stdin")
      ->required();
  inspect_cmd->add_flag("--pages", inspect_pages, "List every page record");
  bool inspect_verify = false;
  inspect_cmd->add_flag("--verify", inspect_verify,
                        "Decode every record and check it re-encodes to the same bytes");

  CLI::App* check_cmd =
      app.add_subcommand("check", "List the kernel features Stasis needs and whether they exist");

  CLI::App* kinds_cmd = app.add_subcommand(
      "kinds", "List the kinds of kernel objects Stasis carries, from its registry (markdown)");

  stasis::cli::SessionCommands session_cmds(app);
  stasis::cli::MigrateCommands migrate_cmds(app);

  CLI11_PARSE(app, argc, argv);
  if (*dump_cmd) {
    stasis::sys::UniqueFd init_pidfd;
    if (!dump_session.empty()) {
      stasis::Status s =
          stasis::cli::ResolveSessionDump(state_dir, dump_session, &dump, &init_pidfd);
      if (!s.ok()) return Fail(s.error());
    } else if (dump.pid == 0) {
      return Fail(stasis::Error::Invalid("dump needs -t PID or --session NAME"));
    }
    if (dump_dir.empty() == dump_out.empty()) {
      return Fail(Error::Invalid("dump needs -D DIR or -o - (stdout)"));
    }
    dump.policy.external_unix_close = external_unix == "close";
    auto sink = OpenImageSink(dump_dir, dump_out);
    if (!sink.ok()) return Fail(sink.error());
    CliEnv env(progress);
    // stdout carries the image alone; it closes when this process ends,
    // after the tree was killed, which is the reader's signal to go on.
    int rc = RunDump(env.env(), dump, **sink);
    if (rc == 0 && init_pidfd.valid() && !dump.leave_running) {
      stasis::Status s = stasis::cli::WaitSessionEnd(state_dir, dump_session, init_pidfd.get());
      if (!s.ok()) return Fail(s.error());
    }
    return rc;
  }
  if (*restore_cmd) {
    if (restore_dir.empty() == restore_in.empty()) {
      return Fail(Error::Invalid("restore needs -D DIR or -i - (stdin)"));
    }
    restore.new_pid_ns = pid_ns == "new";
    restore.spool_dir = SpoolDir();
    std::string registered;
    restore.before_release =
        stasis::cli::SessionRegistrar(state_dir, restore_name, restore_dir, &registered);
    CliEnv env(progress);
    int rc = RunRestore(env.env(), restore, restore_dir, restore_in);
    if (rc == 0 && !registered.empty())
      fmt::print(stderr, "stasis: restored session {}\n", registered);
    return rc;
  }
  if (*inspect_cmd)
    return inspect_verify ? RunVerify(inspect_dir) : RunInspect(inspect_dir, inspect_pages);
  if (*check_cmd) return RunCheck();
  if (*kinds_cmd) {
    fmt::print("{}", stasis::kinds::KindsMarkdown());
    return 0;
  }
  if (auto code = session_cmds.Run()) return *code;
  if (auto code = migrate_cmds.Run()) return *code;
  return 2;
}
