// stasis receive, the destination's side of one migration: check the
// source's Hello, hold the pre-copied pages, restore the tree from the
// switch-over image with them, and run it only once the source commits.
// Until then a failure, or the source going away, kills what was built
// here and leaves nothing behind; after it, the tree is ours.
#pragma once

#include <functional>
#include <string>

#include "migrate/channel.h"
#include "migrate/postcopy_dest.h"
#include "restore/restore.h"
#include "sys/env.h"

namespace stasis::migrate {

struct ReceiveOptions {
  restore::RestoreOptions restore;  // spool_dir, before_release (a session's registration)
  int timeout_ms = 30000;           // a silent source
  // Waiting for the commit: the source's dump is frozen and the link may
  // be slow to come back; the source gives up well before.
  int commit_timeout_ms = 300000;
  // Post-copy recovery: the listener's next connection, to wait for a
  // source whose link broke (postcopy_dest.h); empty: none.
  AcceptNext accept;
  int recovery_ms = 300000;
};

struct ReceiveSummary {
  std::string peer, source;  // ADDR:PORT, and its hostname
  std::string session_name;  // as dumped
  int rounds = 0;
  uint64_t precopy_bytes = 0;
  uint64_t image_bytes = 0;
  bool postcopy = false;
  pid_t root_pid = 0;  // host PID
  double restore_ms = 0;
  double total_ms = 0;
  uint64_t faults = 0;
  double blocktime_ms = 0;
  int reconnects = 0;  // post-copy: links that broke and came back
};

// `registered` is filled by options.restore.before_release's caller (the
// name a session got here) and sent back to the source in Done.
Result<ReceiveSummary> ServeMigration(const sys::Env& env, Channel& channel,
                                      const ReceiveOptions& options,
                                      const std::string* registered = nullptr);

}  // namespace stasis::migrate
