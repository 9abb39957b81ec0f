#include "cli/migrate_cmds.h"

#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "cli/console.h"
#include "cli/session_link.h"
#include "migrate/channel.h"
#include "migrate/destination.h"
#include "migrate/source.h"
#include "migrate/token.h"
#include "session/session.h"

namespace stasis::cli {

namespace {

constexpr char kTokenHelp[] =
    "File holding the secret both ends share (mode 0600 or stricter); the stream is encrypted "
    "and authenticated with TLS 1.3 keyed from it";
constexpr char kRecoveryHelp[] =
    "Post-copy: seconds to wait for the other end after the link broke (default 300); the "
    "destination's tree is then lost";
constexpr char kInsecureHelp[] =
    "No token, no encryption: only on a link you trust (both ends must say it)";

Result<migrate::ChannelOptions> ChannelFrom(const std::string& token_file, bool insecure,
                                            double bandwidth_mbps) {
  migrate::ChannelOptions o;
  o.bandwidth_mbps = bandwidth_mbps;
  if (insecure == !token_file.empty()) {
    return Error::Invalid("give --token-file FILE, or --insecure for a link you trust");
  }
  o.insecure = insecure;
  if (!insecure) o.token = STASIS_TRY(migrate::ReadTokenFile(token_file));
  return o;
}

// A session registered here by a migration that then failed: its tree is
// gone (the restore killed it), its record and cgroup must go too.
void DropRecord(const std::string& state_dir, const std::string& name) {
  std::string dir = session::ResolveStateDir(state_dir);
  // Its init kills the tree when the failed restore lets go of it: that
  // takes a moment.
  for (int i = 0; i < 100; ++i) {
    {
      Result<session::StateDirLock> lock = session::StateDirLock::Acquire(dir);
      if (!lock.ok()) return;
      Result<session::SessionInfo> info = session::FindSession(dir, name);
      if (!info.ok()) return;
      if (info->state == session::SessionState::kGone) {
        (void)session::CleanupSession(dir, *info);
        return;
      }
    }
    usleep(50000);
  }
}

std::string MiB(uint64_t bytes) { return fmt::format("{:.1f} MiB", bytes / 1048576.0); }

nlohmann::json ToJson(const migrate::MigrateSummary& s) {
  return {{"peer", s.peer},
          {"destination", s.destination},
          {"rounds", s.rounds},
          {"decision", s.decision},
          {"postcopy", s.postcopy},
          {"resident_bytes", s.resident_bytes},
          {"precopy_bytes", s.precopy_bytes},
          {"image_bytes", s.image_bytes},
          {"postcopy_bytes", s.postcopy_bytes},
          {"total_bytes", s.total_bytes},
          {"precopy_ms", s.precopy_ms},
          {"frozen_ms", s.frozen_ms},
          {"restore_ms", s.restore_ms},
          {"postcopy_ms", s.postcopy_ms},
          {"total_ms", s.total_ms},
          {"faults", s.faults},
          {"blocktime_ms", s.blocktime_ms},
          {"reconnects", s.reconnects},
          {"session", s.session_name},
          {"root_pid", s.root_pid}};
}

nlohmann::json ToJson(const migrate::ReceiveSummary& s) {
  return {{"peer", s.peer},
          {"source", s.source},
          {"session", s.session_name},
          {"rounds", s.rounds},
          {"precopy_bytes", s.precopy_bytes},
          {"image_bytes", s.image_bytes},
          {"postcopy", s.postcopy},
          {"root_pid", s.root_pid},
          {"restore_ms", s.restore_ms},
          {"total_ms", s.total_ms},
          {"faults", s.faults},
          {"blocktime_ms", s.blocktime_ms},
          {"reconnects", s.reconnects}};
}

}  // namespace

MigrateCommands::MigrateCommands(CLI::App& app) {
  migrate_cmd_ = app.add_subcommand(
      "migrate", "Move a running session or tree to another machine (`stasis receive` there)");
  CLI::Option* tree = migrate_cmd_->add_option("-t,--tree", pid_, "PID of the tree's root");
  migrate_cmd_->add_option("--session", session_, "A session started by `stasis run`")
      ->excludes(tree);
  migrate_cmd_->add_option("--to", to_, "ADDR:PORT where `stasis receive` listens")->required();
  migrate_cmd_->add_option("--token-file", token_file_, kTokenHelp);
  migrate_cmd_->add_flag("--insecure", insecure_, kInsecureHelp);
  migrate_cmd_->add_option("--downtime-ms", downtime_ms_,
                           "Budget for the time the tree is frozen (default 300)");
  migrate_cmd_
      ->add_option("--postcopy", postcopy_,
                   "auto: switch to post-copy when pre-copy does not converge (default); "
                   "never: copy the rest while frozen instead; always: right after one round")
      ->check(CLI::IsMember({"auto", "never", "always"}));
  migrate_cmd_->add_option("--bandwidth", bandwidth_mbps_,
                           "Limit the migration's stream to this many Mbit/s");
  migrate_cmd_->add_option("--state-dir", state_dir_, "Where sessions are recorded");
  migrate_cmd_->add_option("--recovery-timeout", recovery_s_, kRecoveryHelp);
  migrate_cmd_->add_flag("--json", json_, "Print the summary as JSON on stdout");
  migrate_cmd_->add_flag("--progress", progress_, "Print the phases on stderr as they go");

  receive_cmd_ = app.add_subcommand(
      "receive", "Take migrations in: restore each tree that `stasis migrate` sends here");
  receive_cmd_->add_option("--listen", listen_, "ADDR:PORT to listen on (port 0: any)")->required();
  receive_cmd_->add_flag("--once", once_, "Serve one migration, then exit with its outcome");
  receive_cmd_->add_option("--token-file", token_file_, kTokenHelp);
  receive_cmd_->add_flag("--insecure", insecure_, kInsecureHelp);
  receive_cmd_->add_option("--state-dir", state_dir_, "Where sessions are recorded");
  receive_cmd_->add_option("--recovery-timeout", recovery_s_, kRecoveryHelp);
  receive_cmd_->add_flag("--json", json_, "Print each migration's summary as JSON on stdout");
  receive_cmd_->add_flag("--progress", progress_, "Print the phases on stderr as they go");
}

std::optional<int> MigrateCommands::Run() const {
  if (*migrate_cmd_) return RunMigrate();
  if (*receive_cmd_) return RunReceive();
  return std::nullopt;
}

int MigrateCommands::RunMigrate() const {
  // A destination that goes away must fail a write, not kill us with the
  // tree frozen.
  signal(SIGPIPE, SIG_IGN);
  migrate::MigrateOptions options;
  Result<migrate::ChannelOptions> channel = ChannelFrom(token_file_, insecure_, bandwidth_mbps_);
  if (!channel.ok()) return Fail(channel.error());
  options.channel = *channel;
  options.to = to_;
  options.downtime_ms = downtime_ms_;
  options.recovery_ms = recovery_s_ * 1000;
  options.postcopy = postcopy_ == "never"    ? migrate::PostcopyMode::kNever
                     : postcopy_ == "always" ? migrate::PostcopyMode::kAlways
                                             : migrate::PostcopyMode::kAuto;
  sys::UniqueFd init_pidfd;
  if (!session_.empty()) {
    Status s = ResolveSessionDump(state_dir_, session_, &options.dump, &init_pidfd);
    if (!s.ok()) return Fail(s.error());
  } else if (pid_ == 0) {
    return Fail(Error::Invalid("migrate needs -t PID or --session NAME"));
  } else {
    options.dump.pid = pid_;
  }
  CliEnv env(progress_);
  Result<migrate::MigrateSummary> summary = migrate::Migrate(env.env(), options);
  if (!summary.ok()) return Fail(summary.error());
  if (init_pidfd.valid()) {
    Status s = WaitSessionEnd(state_dir_, session_, init_pidfd.get());
    if (!s.ok()) return Fail(s.error());
  }
  const migrate::MigrateSummary& m = *summary;
  std::string what = session_.empty() ? fmt::format("pid {}", pid_) : "session " + session_;
  fmt::print(
      stderr,
      "stasis: migrated {} to {} ({}){}: {} pre-copy round{}, {} sent ({} pre-copy, {} at "
      "switch-over, {} post-copy), frozen {:.0f} ms (of which the destination read the image and "
      "built the tree in {:.0f} ms), {}total {:.0f} "
      "ms; {}\n",
      what, m.peer, m.destination, m.session_name.empty() ? "" : " as session " + m.session_name,
      m.rounds, m.rounds == 1 ? "" : "s", MiB(m.total_bytes), MiB(m.precopy_bytes),
      MiB(m.image_bytes), MiB(m.postcopy_bytes), m.frozen_ms, m.restore_ms,
      m.postcopy ? fmt::format("post-copy {:.0f} ms ({} faults, {:.0f} ms blocked{}), ",
                               m.postcopy_ms, m.faults, m.blocktime_ms,
                               m.reconnects ? fmt::format(", {} reconnects", m.reconnects) : "")
                 : "",
      m.total_ms, m.decision);
  if (json_) fmt::print("{}\n", ToJson(m).dump());
  return 0;
}

int MigrateCommands::RunReceive() const {
  signal(SIGPIPE, SIG_IGN);
  Result<migrate::ChannelOptions> channel = ChannelFrom(token_file_, insecure_, 0);
  if (!channel.ok()) return Fail(channel.error());
  Result<migrate::Listener> listener = migrate::Listener::Listen(listen_);
  if (!listener.ok()) return Fail(listener.error());
  std::string host = listen_.substr(0, listen_.rfind(':'));
  fmt::print(stderr, "stasis: receiving on {}:{}\n", host, listener->port());
  std::fflush(stderr);
  CliEnv env(progress_);
  for (;;) {
    Result<std::unique_ptr<migrate::Channel>> conn = listener->Accept(*channel, 10000);
    if (!conn.ok()) {
      // A peer that fails the handshake (no token, plain TCP) is refused;
      // the next one may be the migration.
      Fail(conn.error());
      if (once_) return 1;
      continue;
    }
    migrate::ReceiveOptions options;
    const char* tmp = getenv("TMPDIR");
    options.restore.spool_dir = tmp != nullptr && *tmp != '\0' ? tmp : "/var/tmp";
    options.recovery_ms = recovery_s_ * 1000;
    std::string registered;
    options.restore.before_release = SessionRegistrar(state_dir_, "", "", &registered);
    migrate::Listener& l = *listener;
    const migrate::ChannelOptions& copts = *channel;
    options.accept = [&l, &copts](int timeout_ms) -> Result<std::unique_ptr<migrate::Channel>> {
      struct pollfd p = {l.fd(), POLLIN, 0};
      int n = poll(&p, 1, timeout_ms);
      if (n <= 0) return Error::Timeout("no connection came");
      return l.Accept(copts, 10000);
    };
    Result<migrate::ReceiveSummary> r =
        migrate::ServeMigration(env.env(), **conn, options, &registered);
    if (!r.ok()) {
      // The session was registered before the commit; its tree is gone.
      if (!registered.empty()) DropRecord(state_dir_, registered);
      Fail(r.error());
      if (once_) return 1;
      continue;
    }
    fmt::print(
        stderr,
        "stasis: received {} from {} ({}): {} pre-copy round{}, {} held, image {}, "
        "restored in {:.0f} ms{}; root pid {}\n",
        registered.empty() ? "a tree" : "session " + registered, r->peer, r->source, r->rounds,
        r->rounds == 1 ? "" : "s", MiB(r->precopy_bytes), MiB(r->image_bytes), r->restore_ms,
        r->postcopy
            ? fmt::format(", post-copy: {} faults, {:.0f} ms blocked", r->faults, r->blocktime_ms)
            : "",
        r->root_pid);
    if (!registered.empty()) fmt::print(stderr, "stasis: restored session {}\n", registered);
    fmt::print("{}\n", json_ ? ToJson(*r).dump() : std::to_string(r->root_pid));
    std::fflush(stdout);
    std::fflush(stderr);
    if (once_) return 0;
  }
}

}  // namespace stasis::cli
