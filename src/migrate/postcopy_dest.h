// Post-copy, the destination's side: the tree runs here while its deferred
// pages come; a fault on one not here yet asks the source for it
// (mem::LazyPager::OnMissing) and parks until it arrives. A frame goes to
// the source each second (kAlive), so that either end sees a dead link
// within seconds.
//
// Recovery: when the link breaks, the faulting threads stay parked
// (LazyPager::Pause: nothing times out in the pager) while this waits for
// the source to connect again and resume the same migration; it is told
// exactly what is still missing (PageStore::Missing, computed after the
// old link's reader stopped, so no page is sent twice over the tree's newer
// contents). If the source does not come back within recovery_ms, the
// store is closed with the error: the caller then lets the tree go (its
// init kills it rather than let it run without its pages).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "mem/lazy_pager.h"
#include "migrate/channel.h"
#include "sys/env.h"

namespace stasis::migrate {

// The next connection to this destination (a listener's), within
// timeout_ms; an error when none came.
using AcceptNext = std::function<Result<std::unique_ptr<Channel>>(int timeout_ms)>;

struct PostcopyDestination {
  std::string migration_id;
  AcceptNext accept;  // empty: no recovery
  int alive_timeout_ms = 5000;
  int recovery_ms = 300000;
};

// Receives pages until the source's PagesEnd, over `first` and whatever
// connections resume it. Returns the channel the migration ends on (first,
// or one in *owned) for the Done that follows.
Result<Channel*> ReceivePostcopy(const sys::Env& env, const PostcopyDestination& options,
                                 Channel& first, mem::LazyPager& pager,
                                 std::unique_ptr<Channel>* owned, int* reconnects);

}  // namespace stasis::migrate
