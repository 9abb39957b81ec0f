// Post-copy, the source's side: the tree runs on the destination and its
// deferred pages are still here, in the tasks that stay frozen (and
// seized) until the destination says it has them all. Pages it faults on
// go first (PageRequest), the rest in address order (mem::PageServer).
//
// Recovery (QEMU's post-copy recovery): when the link breaks (an error,
// or no frame from the destination for alive_timeout_ms: it sends one each
// second), the source keeps the tree frozen with every page, reconnects,
// says which migration it resumes, and sends exactly what the destination
// says it still lacks. It gives up after recovery_ms, or when the
// destination refuses (it gave up: the tree is lost there).
#pragma once

#include <string>
#include <vector>

#include "mem/page_server.h"
#include "migrate.pb.h"
#include "migrate/channel.h"
#include "sys/env.h"

namespace stasis::migrate {

struct PostcopySource {
  std::string to;
  ChannelOptions channel;
  std::string migration_id;
  int alive_timeout_ms = 5000;
  int recovery_ms = 300000;
};

struct PostcopyStats {
  uint64_t bytes = 0;
  int reconnects = 0;
};

// Serves the deferred pages over `first`, then over new connections if
// the link breaks, until the destination's Done.
Result<Done> ServePostcopy(const sys::Env& env, const PostcopySource& options, Channel& first,
                           std::vector<mem::PageServer::Process> deferred, PostcopyStats* stats);

}  // namespace stasis::migrate
