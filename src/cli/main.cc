// stasis: checkpoint and restore running Linux processes.
#include <fmt/format.h>

#include <signal.h>
#include <sys/wait.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>

#include "checkpoint/dump.h"
#include "cli/session_cmds.h"
#include "cli/session_link.h"
#include "image/inspect.h"
#include "image/stream.h"
#include "kinds/registry.h"
#include "restore/restore.h"
#include "sys/features.h"
#include "sys/proc.h"

namespace {

using stasis::Error;

int Fail(const Error& error) {
  fmt::print(stderr, "stasis: error: {}\n", error.ToString());
  return 1;
}

int RunDump(const stasis::checkpoint::DumpOptions& options) {
  auto stats = stasis::checkpoint::Dump(options);
  if (!stats.ok()) return Fail(stats.error());
  fmt::print(stderr,
             "stasis: dumped pid {} to {}: {:.1f} MiB resident, image {:.1f} MiB, "
             "{:.1f} ms total, frozen {:.1f} ms{}\n",
             options.pid, options.dir, stats->resident_bytes / 1048576.0,
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

int RunRestore(const stasis::restore::RestoreOptions& options) {
  auto result = stasis::restore::Restore(options);
  if (!result.ok()) return Fail(result.error());
  fmt::print(stderr, "stasis: restored pid {} (host pid {}) from {} in {:.1f} ms\n", result->pid,
             result->host_pid, options.dir, result->total_ms);
  fmt::print("{}\n", result->host_pid);
  if (result->pager) {
    // restore --lazy: the tree runs; its pages are served from here until
    // every one is in, and only then may we go.
    std::fflush(stdout);
    stasis::Status done = result->pager->Wait();
    if (!done.ok()) return Fail(done.error());
    stasis::mem::LazyStats lazy = result->pager->stats();
    fmt::print(stderr, "stasis: every page is in: {} faults, {} zero pages, {} pages pushed\n",
               lazy.faults, lazy.zero_faults, lazy.pushed_pages);
  }
  if (result->shell_job) return WaitForJob(*result);
  return 0;
}

// Decodes every record and re-encodes it: the bytes must come out the same.
int RunVerify(const std::string& dir) {
  std::string path = stasis::image::ImagePath(dir);
  auto source = stasis::image::FdSource::OpenFile(path);
  if (!source.ok()) return Fail(source.error());
  stasis::image::StringSink copy;
  stasis::Status s = stasis::image::ReencodeImage(*source.value(), copy);
  if (!s.ok()) return Fail(s.error());
  auto original = stasis::sys::proc::ReadFile(path);
  if (!original.ok()) return Fail(original.error());
  if (original.value() != copy.data()) {
    return Fail(stasis::Error::Corrupt(path + ": re-encoding the image changed its bytes"));
  }
  fmt::print("{}: {} bytes decode and re-encode identically\n", path, copy.data().size());
  return 0;
}

int RunInspect(const std::string& dir, bool pages) {
  auto source = stasis::image::FdSource::OpenFile(stasis::image::ImagePath(dir));
  if (!source.ok()) return Fail(source.error());
  auto json = stasis::image::InspectImage(*source.value(), pages);
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
  dump_cmd->add_option("-D,--images-dir", dump.dir, "Directory for the image (created)")
      ->required();
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
  restore_cmd->add_option("-D,--images-dir", restore.dir, "Directory holding the image")
      ->required();
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
  inspect_cmd->add_option("dir", inspect_dir, "Image directory")->required();
  inspect_cmd->add_flag("--pages", inspect_pages, "List every page record");
  bool inspect_verify = false;
  inspect_cmd->add_flag("--verify", inspect_verify,
                        "Decode every record and check it re-encodes to the same bytes");

  CLI::App* check_cmd =
      app.add_subcommand("check", "List the kernel features Stasis needs and whether they exist");

  CLI::App* kinds_cmd = app.add_subcommand(
      "kinds", "List the kinds of kernel objects Stasis carries, from its registry (markdown)");

  stasis::cli::SessionCommands session_cmds(app);

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
    dump.policy.external_unix_close = external_unix == "close";
    int rc = RunDump(dump);
    if (rc == 0 && init_pidfd.valid() && !dump.leave_running) {
      stasis::Status s = stasis::cli::WaitSessionEnd(dump_session, init_pidfd.get());
      if (!s.ok()) return Fail(s.error());
    }
    return rc;
  }
  if (*restore_cmd) {
    restore.new_pid_ns = pid_ns == "new";
    std::string registered;
    restore.before_release =
        stasis::cli::SessionRegistrar(state_dir, restore_name, restore.dir, &registered);
    int rc = RunRestore(restore);
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
  return 2;
}
