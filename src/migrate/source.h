// stasis migrate, the source's side: pre-copy rounds while the tree runs,
// then the switch-over (the ordinary dump, sending only what the
// destination lacks), then post-copy if rounds did not converge. The
// phases and the guarantees are in docs/design.md ("Live migration").
//
// Until the source sends Commit, any failure leaves the tree running here
// as if nothing happened (the dump aborts and releases it) and the
// destination kills what it built; once Commit is sent, the tree is the
// destination's and the dump kills it here.
#pragma once

#include <string>

#include "checkpoint/dump.h"
#include "migrate/channel.h"
#include "migrate/convergence.h"
#include "sys/env.h"

namespace stasis::migrate {

struct MigrateOptions {
  checkpoint::DumpOptions dump;  // pid, session, policy
  std::string to;                // ADDR:PORT of `stasis receive`
  ChannelOptions channel;
  double downtime_ms = 300;  // QEMU's default budget
  PostcopyMode postcopy = PostcopyMode::kAuto;
  int max_rounds = 30;
  int timeout_ms = 30000;           // a silent destination, before the switch-over
  int restore_timeout_ms = 120000;  // the destination building the tree
  // Post-copy: how long to keep trying to reach a destination whose link
  // broke, the tree frozen here with its pages (postcopy_source.h).
  int recovery_ms = 300000;
};

struct MigrateSummary {
  std::string peer, destination;  // ADDR:PORT, and its hostname
  int rounds = 0;
  std::string decision;  // why the rounds stopped
  bool postcopy = false;
  uint64_t resident_bytes = 0;
  uint64_t precopy_bytes = 0, image_bytes = 0, postcopy_bytes = 0, total_bytes = 0;
  double precopy_ms = 0;
  double frozen_ms = 0;    // from the freeze until the destination was told to run it
  double postcopy_ms = 0;  // from the commit until every page was on the destination
  double total_ms = 0;
  double restore_ms = 0;  // the destination's restore, inside frozen_ms
  int reconnects = 0;     // post-copy: links that broke and came back
  uint64_t faults = 0;    // post-copy faults that waited for the source
  double blocktime_ms = 0;
  std::string session_name;  // as registered on the destination
  int root_pid = 0;          // host PID there
};

Result<MigrateSummary> Migrate(const sys::Env& env, const MigrateOptions& options);

}  // namespace stasis::migrate
