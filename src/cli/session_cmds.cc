#include "cli/session_cmds.h"

#include <fmt/format.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>

#include "cli/console.h"
#include "session/json.h"
#include "session/run.h"
#include "session/session.h"
#include "sys/cgroup.h"

namespace stasis::cli {
namespace {

using session::SessionInfo;
using session::SessionState;

constexpr char kStateDirHelp[] =
    "Where session files live (default: $STASIS_STATE_DIR, else /run/stasis/sessions)";

int RunRun(session::RunOptions options) {
  StderrLogger log;
  Result<session::RunOutcome> outcome = session::RunSession(options, log);
  if (!outcome.ok()) return Fail(outcome.error());
  if (outcome->exec_errno != 0) {
    fmt::print(stderr, "stasis: error: cannot run '{}': {} ({})\n", options.command.front(),
               ErrnoName(outcome->exec_errno), strerror(outcome->exec_errno));
  } else if (options.detach) {
    fmt::print("{}\n", outcome->info.name);
  }
  return outcome->exit_code;
}

std::string HumanBytes(uint64_t bytes) {
  if (bytes < 1024) return fmt::format("{}B", bytes);
  const char* units = "KMGTP";
  double value = bytes / 1024.0;
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  return fmt::format("{:.1f}{}", value, units[unit]);
}

std::string JoinCommand(const std::vector<std::string>& command) {
  std::string out;
  for (const std::string& arg : command) {
    if (!out.empty()) out += ' ';
    out += arg.find_first_of(" \t\n'\"") == std::string::npos ? arg : "'" + arg + "'";
  }
  return out;
}

struct Row {
  const SessionInfo* info;
  session::SessionUsage usage;
};

void PrintTable(const std::vector<Row>& rows) {
  size_t name_width = 4;
  for (const Row& row : rows) name_width = std::max(name_width, row.info->name.size());
  fmt::print("{:<{}}  {:<7}  {:>7}  {:>7}  {:>5}  {:>7}  {:<18}  {}\n", "NAME", name_width, "STATE",
             "INIT", "PID", "PROCS", "MEMORY", "ADDRESS", "COMMAND");
  for (const Row& row : rows) {
    const SessionInfo& s = *row.info;
    std::string address = s.net ? net::FormatCidr(s.net->address, s.net->prefix) : "host";
    fmt::print("{:<{}}  {:<7}  {:>7}  {:>7}  {:>5}  {:>7}  {:<18}  {}\n", s.name, name_width,
               session::StateName(s.state), s.init_pid, s.root_pid, row.usage.processes,
               HumanBytes(row.usage.memory_bytes), address, JoinCommand(s.command));
  }
}

void PrintJson(const std::vector<Row>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const Row& row : rows) {
    const SessionInfo& s = *row.info;
    out.push_back({
        {"name", s.name},
        {"state", session::StateName(s.state)},
        {"init_pid", s.init_pid},
        {"root_pid", s.root_pid},
        {"cgroup", s.cgroup},
        {"command", s.command},
        {"created", session::FormatUtc(s.created_unix)},
        {"origin", s.origin},
        {"image", s.image},
        {"address", s.net ? net::FormatCidr(s.net->address, s.net->prefix) : ""},
        {"bridge", s.net ? s.net->bridge : ""},
        {"mac", s.net ? net::FormatMac(s.net->mac) : ""},
        {"processes", row.usage.processes},
        {"memory_bytes", row.usage.memory_bytes},
        {"memory_source", row.usage.memory_from_cgroup ? "memory.current" : "VmRSS"},
    });
  }
  fmt::print("{}\n", out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
}

// Removes what gone sessions left, re-checking under the lock that each is
// still gone (a new session may have taken the name since the listing).
void CleanGone(const std::string& state_dir, const std::vector<SessionInfo>& sessions) {
  auto gone = [](const SessionInfo& s) { return s.state == SessionState::kGone; };
  if (std::none_of(sessions.begin(), sessions.end(), gone)) return;
  Result<session::StateDirLock> lock = session::StateDirLock::Acquire(state_dir);
  if (!lock.ok()) {
    fmt::print(stderr, "stasis: warning: {}\n", lock.error().ToString());
    return;
  }
  for (const SessionInfo& listed : sessions) {
    if (!gone(listed)) continue;
    Result<SessionInfo> now = session::FindSession(state_dir, listed.name);
    if (!now.ok() || !gone(*now)) continue;
    Status cleaned = CleanupSession(state_dir, *now);
    if (!cleaned.ok()) {
      fmt::print(stderr, "stasis: warning: clean up session {}: {}\n", listed.name,
                 cleaned.error().ToString());
    }
  }
}

int RunPs(const std::string& flag_dir, bool json) {
  std::string state_dir = session::ResolveStateDir(flag_dir);
  StderrLogger log;
  Result<std::vector<SessionInfo>> sessions = session::ListSessions(state_dir, log);
  if (!sessions.ok()) return Fail(sessions.error());
  std::vector<Row> rows;
  for (const SessionInfo& info : *sessions) {
    Row row{&info, {}};
    if (info.state == SessionState::kRunning) {
      Result<session::SessionUsage> usage = session::MeasureSession(info);
      if (usage.ok()) row.usage = *usage;
    }
    rows.push_back(row);
  }
  json ? PrintJson(rows) : PrintTable(rows);
  CleanGone(state_dir, *sessions);
  return 0;
}

int RunFreeze(const std::string& flag_dir, const std::string& name, double seconds) {
  Result<SessionInfo> info = session::FindSession(session::ResolveStateDir(flag_dir), name);
  if (!info.ok()) return Fail(info.error());
  if (info->state != SessionState::kRunning) {
    return Fail(Error::NotFound(fmt::format("session {} is gone", name)));
  }
  if (info->cgroup.empty()) {
    return Fail(Error::Unsupported(fmt::format("session {} has no cgroup to freeze", name)));
  }
  Result<sys::Cgroup> cgroup = sys::Cgroup::Open(info->cgroup);
  if (!cgroup.ok()) return Fail(cgroup.error());
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&set, sig);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  auto start = std::chrono::steady_clock::now();
  Result<sys::FrozenCgroup> frozen = sys::FrozenCgroup::Freeze(*cgroup);
  if (!frozen.ok()) return Fail(frozen.error());
  std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - start;
  fmt::print("frozen {} in {:.1f} ms\n", name, took.count());
  std::fflush(stdout);
  if (seconds > 0) {
    struct timespec wait = {static_cast<time_t>(seconds),
                            static_cast<long>((seconds - static_cast<time_t>(seconds)) * 1e9)};
    sigtimedwait(&set, nullptr, &wait);
  } else {
    sigwaitinfo(&set, nullptr);
  }
  Status thawed = frozen->Thaw();
  if (!thawed.ok()) return Fail(thawed.error());
  fmt::print("thawed {}\n", name);
  return 0;
}

}  // namespace

SessionCommands::SessionCommands(CLI::App& app) {
  run_cmd_ = app.add_subcommand(
      "run", "Start a session: CMD in its own PID and mount namespace and cgroup");
  run_cmd_->add_option("-n,--name", name_, "Session name (default: s-<host PID of its init>)");
  run_cmd_->add_option("--state-dir", state_dir_, kStateDirHelp);
  run_cmd_->add_flag("-d,--detach", detach_, "Print the session name and return at once");
  run_cmd_
      ->add_option("--net", net_,
                   "host (default): the host's network; isolated: a network namespace of its "
                   "own, a veth into a bridge, its own address")
      ->check(CLI::IsMember({"host", "isolated"}));
  run_cmd_->add_option(
      "--address", address_,
      "With --net=isolated: ADDR/PREFIX (default: the lowest free address of 10.83.0.0/16)");
  run_cmd_->add_option("--bridge", bridge_,
                       "With --net=isolated: the bridge the session's veth joins, created with "
                       "the subnet's first address if missing (default: stasis0)");
  run_cmd_
      ->add_option("command", command_,
                   "CMD and its arguments; put -- before CMD when any of them starts with -")
      ->required();
  run_cmd_->footer(
      "CMD runs as PID 2 under a small stasis init (PID 1) that reaps every process, passes\n"
      "SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 on to CMD, and when CMD exits kills\n"
      "what is left of the session and removes its cgroup and state file. stdin, stdout and\n"
      "stderr are inherited. In the foreground, stasis run passes those signals on too and\n"
      "exits with CMD's status (128+N if CMD was killed by signal N); if stasis run itself is\n"
      "killed, so is the session. A name that a running session holds is refused.\n"
      "With --net=isolated the session has its own network namespace (lo, and eth0 with its\n"
      "address and a default route via the bridge); dump and restore carry it, with the same\n"
      "address and MAC, so its listeners and connections come back verbatim.\n"
      "Example: stasis run --name job -- python3 train.py --epochs 10\n"
      "         stasis run --name web --net=isolated --address 10.83.0.7/16 -- python3 app.py\n");

  ps_cmd_ = app.add_subcommand("ps", "List sessions with their processes and memory");
  ps_cmd_->add_option("--state-dir", state_dir_, kStateDirHelp);
  ps_cmd_->add_flag("--json", json_, "Print a JSON array instead of a table");
  ps_cmd_->footer(
      "PROCS counts the processes in the session's cgroup, its init included. MEMORY is the\n"
      "cgroup's memory.current when the memory controller is enabled for it, else the sum\n"
      "of the processes' VmRSS. A session whose init has died is listed once as 'gone',\n"
      "then what it left (cgroup, state file) is removed.\n");

  freeze_cmd_ = app.add_subcommand(
      "freeze",
      "Freeze a session (cgroup v2 freezer), then thaw it after --seconds or on a signal");
  freeze_cmd_->add_option("name", name_, "Session name")->required();
  freeze_cmd_
      ->add_option("--seconds", seconds_, "Thaw after this long (default: wait for a signal)")
      ->check(CLI::NonNegativeNumber);
  freeze_cmd_->add_option("--state-dir", state_dir_, kStateDirHelp);
}

std::optional<int> SessionCommands::Run() const {
  if (*run_cmd_) {
    session::RunOptions options;
    options.command = command_;
    options.name = name_;
    options.state_dir = state_dir_;
    options.detach = detach_;
    options.net_isolated = net_ == "isolated";
    options.address = address_;
    options.bridge = bridge_;
    return RunRun(options);
  }
  if (*ps_cmd_) return RunPs(state_dir_, json_);
  if (*freeze_cmd_) return RunFreeze(state_dir_, name_, seconds_);
  return std::nullopt;
}

}  // namespace stasis::cli
