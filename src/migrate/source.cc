#include "migrate/source.h"

#include <fmt/format.h>

#include <chrono>
#include <optional>
#include <random>
#include <thread>

#include "mem/page_server.h"
#include "mem/precopy.h"
#include "migrate/hello.h"
#include "migrate/image_link.h"
#include "migrate/postcopy_source.h"
#include "migrate/protocol.h"
#include "net/isolated_net.h"
#include "sys/proc.h"

namespace stasis::migrate {

namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// What a switch-over costs besides the dirty pages: freeze, collect, the
// destination's restore of the tree and its release. Measured on this kind
// of machine for the Jupyter session (docs/benchmarks.md); a tree with more
// processes takes longer, which the estimate does not see.
constexpr double kFixedSwitchoverMs = 60;

std::string RandomId() {
  std::random_device rd;
  return fmt::format("{:08x}{:08x}", rd(), rd());
}

Result<Hello> BuildHello(const MigrateOptions& options) {
  HostFacts here = STASIS_TRY(ThisHost());
  Hello h;
  h.set_version(kProtocolVersion);
  h.set_migration_id(RandomId());
  h.set_xfeatures(here.xfeatures);
  h.set_vdso(here.vdso);
  h.set_kernel_release(here.kernel_release);
  h.set_hostname(here.hostname);
  h.set_session_name(options.dump.session_name);
  if (options.dump.session_net) {
    h.set_net_address(options.dump.session_net->address);
    h.set_host_link(options.dump.session_net->host_link);
  }
  h.set_postcopy(options.postcopy != PostcopyMode::kNever);
  return h;
}

// The switch-over and what follows it, run by the image sink's Commit while
// the tree is frozen here. Before Commit is sent, an error aborts the
// migration (the tree runs on here); after it, errors are kept in
// post_commit (the tree is the destination's whatever happens next).
struct SwitchOver {
  const sys::Env& env;
  const MigrateOptions& options;
  Channel& channel;
  FrameWriter& out;
  FrameReader& in;
  bool postcopy;
  std::string migration_id;
  std::vector<mem::PageServer::Process> deferred;
  Clock::time_point frozen_at;
  MigrateSummary& summary;
  std::optional<Error> post_commit;
  std::function<Status()> exit_kill;  // from the dump (DumpOptions::arm_exit_kill)

  Status Run() {
    channel.SetTimeout(options.restore_timeout_ms);
    Ready ready = STASIS_TRY(in.ExpectMessage<Ready>(Msg::kReady, "switch-over"));
    summary.restore_ms = ready.restore_ms();
    // Before the commit can reach the destination: should this process die
    // from now on, the frozen tree dies with it rather than run beside the
    // destination's copy (and if it dies before the commit is sent, the
    // destination, never told, drops its own: no copy, never two).
    if (exit_kill) STASIS_TRY_CTX(exit_kill(), "switch-over: tie the tree to this process");
    STASIS_TRY_CTX(out.Send(Msg::kCommit), "switch-over: send commit");
    STASIS_TRY_CTX(out.Flush(), "switch-over: send commit");
    summary.frozen_ms = MsSince(frozen_at);
    env.Report("commit");
    Status after = AfterCommit();
    if (after.ok()) return Ok();
    // The destination says Done only once it has every page, and until
    // then its tree dies with its receiver (restore/spawn.h's guard): a
    // receiver that went away (its end of the connection closed) took its
    // copy with it, whether or not it had read the commit, so ours runs on.
    // A silent link says nothing of the kind: the destination may run the
    // tree, so ours goes. Post-copy has the destination's tree run already.
    if (!postcopy && after.error().code() != ErrorCode::kTimeout) {
      return std::move(after).error().Context(
          "the destination went away after the commit, before it had every page, and its copy "
          "with it");
    }
    post_commit = std::move(after).error();
    return Ok();
  }

  Status AfterCommit() {
    Clock::time_point start = Clock::now();
    Done done = postcopy
                    ? STASIS_TRY(ServePages())
                    : STASIS_TRY(in.ExpectMessage<Done>(Msg::kDone, "wait for the destination"));
    summary.postcopy_ms = postcopy ? MsSince(start) : 0;
    summary.session_name = done.session_name();
    summary.root_pid = done.root_pid();
    summary.faults = done.faults();
    summary.blocktime_ms = done.blocktime_ms();
    return Ok();
  }

  Result<Done> ServePages() {
    env.Report("postcopy");
    PostcopySource link{options.to, options.channel, migration_id, 5000, options.recovery_ms};
    PostcopyStats stats;
    Result<Done> done = ServePostcopy(env, link, channel, std::move(deferred), &stats);
    summary.postcopy_bytes = stats.bytes;
    summary.reconnects = stats.reconnects;
    return done;
  }
};

// Pre-copy rounds until the convergence check says stop; returns the
// decision.
Result<Decision> PrecopyRounds(const sys::Env& env, const MigrateOptions& options,
                               mem::Precopy& precopy, FrameWriter& out, MigrateSummary& summary) {
  Convergence convergence(options.downtime_ms, options.postcopy, kFixedSwitchoverMs,
                          options.max_rounds);
  Clock::time_point start = Clock::now();
  for (;;) {
    env.Report("precopy", out.bytes());
    uint64_t before = out.bytes();
    Clock::time_point t = Clock::now();
    mem::RoundStats round = STASIS_TRY(
        precopy.SendRound([&](uint32_t pid, uint64_t addr, uint64_t n, const uint8_t* data) {
          return out.SendPages(pid, addr, n, data);
        }));
    STASIS_TRY(out.Flush());
    double ms = MsSince(t);
    uint64_t dirty = STASIS_TRY(precopy.DirtyPages()) * image::kPageSize;
    RoundEnd end;
    end.set_round(convergence.rounds() + 1);
    end.set_pages(round.pages_sent);
    end.set_dirty_pages(dirty / image::kPageSize);
    STASIS_TRY(out.Send(Msg::kRoundEnd, end));
    Decision d = convergence.After({out.bytes() - before, ms, dirty});
    env.log.Info(fmt::format("pre-copy round {}: {} pages in {:.0f} ms, {} dirty; {}",
                             convergence.rounds(), round.pages_sent, ms, dirty / image::kPageSize,
                             d.why));
    if (d.next != Next::kRound) {
      summary.rounds = convergence.rounds();
      summary.precopy_ms = MsSince(start);
      summary.precopy_bytes = out.bytes();
      return d;
    }
  }
}

}  // namespace

Result<MigrateSummary> Migrate(const sys::Env& env, const MigrateOptions& options) {
  Clock::time_point start = Clock::now();
  MigrateSummary summary;
  Hello hello = STASIS_TRY(BuildHello(options));
  env.Report("connect");
  std::unique_ptr<Channel> channel =
      STASIS_TRY(Channel::Connect(options.to, options.channel, options.timeout_ms));
  channel->SetTimeout(options.timeout_ms);
  summary.peer = channel->peer();
  FrameWriter out(*channel);
  FrameReader in(*channel, channel->peer());
  STASIS_TRY_CTX(out.Send(Msg::kHello, hello), "migrate");
  STASIS_TRY_CTX(out.Flush(), "migrate");
  Accept accept = STASIS_TRY(in.ExpectMessage<Accept>(Msg::kAccept, "migrate: hello"));
  summary.destination = accept.hostname();

  // Everything up to the commit must leave the tree as it was, and tell
  // the destination to drop what it has.
  auto abort = [&](Error e) -> Error {
    Refuse r;
    r.set_reason("the source stopped the migration: " + e.message());
    (void)out.Send(Msg::kRefuse, r);
    (void)out.Flush();
    return std::move(e).Context("migration stopped before the switch-over; the tree runs on here");
  };

  std::optional<mem::Precopy> precopy;
  Decision decision{Next::kStopAndCopy, 0, "no pre-copy: this kernel lacks uffd WP_ASYNC"};
  if (env.features.Has("uffd WP_ASYNC")) {
    precopy = mem::Precopy::StartTracking(options.dump.pid);
    Result<Decision> d = PrecopyRounds(env, options, *precopy, out, summary);
    if (!d.ok()) return abort(std::move(d).error());
    decision = *d;
  } else {
    // Without tracking there is nothing to hand off: a stop-and-copy (and
    // no post-copy, whose deferred pages come out of the same split).
    env.log.Info(decision.why);
  }
  summary.decision = decision.why;
  summary.postcopy = decision.next == Next::kPostcopy;

  checkpoint::DumpOptions dump = options.dump;
  checkpoint::PageHandoff handoff{precopy ? &*precopy : nullptr, summary.postcopy};
  if (precopy) dump.handoff = &handoff;
  // Without its own network, the tree's address stays here.
  dump.policy.moving_host = !dump.session_net.has_value();
  SwitchOver switchover{env, options, *channel, out, in, summary.postcopy, hello.migration_id(),
                        {},  {},      summary,  {},  {}};
  dump.on_deferred = [&](const std::vector<checkpoint::DeferredPages>& deferred) {
    for (const checkpoint::DeferredPages& d : deferred) {
      switchover.deferred.push_back({d.host_pid, d.pid, d.ranges});
    }
    return Ok();
  };
  dump.arm_exit_kill = &switchover.exit_kill;
  ImageFramesSink sink(out, channel->peer(), [&] { return switchover.Run(); });
  sys::Env dump_env = env;
  dump_env.progress = [&](const Progress& p) {
    if (p.phase == "freeze") switchover.frozen_at = Clock::now();
    if (env.progress) env.progress(p);
  };
  Result<checkpoint::DumpStats> stats = checkpoint::Dump(dump_env, dump, sink);
  if (!stats.ok()) return abort(std::move(stats).error());
  summary.image_bytes = sink.bytes();
  summary.resident_bytes = stats->resident_bytes;
  summary.total_bytes = channel->bytes_sent();
  summary.total_ms = MsSince(start);
  if (switchover.post_commit) {
    return std::move(*switchover.post_commit)
        .Context("the destination took the tree over (commit sent), then failed");
  }
  return summary;
}

}  // namespace stasis::migrate
