// What the user lets a dump do with objects tied to the outside of the
// dumped tree, which are refused by default (stasis dump's flags).
#pragma once

namespace stasis::kinds {

struct DumpPolicy {
  // --external-unix=close: a unix socket whose peer (or the listener it
  // waits on) is outside the tree is carried as if that peer had closed;
  // connections from outside waiting in a listener's backlog are dropped.
  bool external_unix_close = false;
  // --shell-job: a terminal whose master is outside the tree (and the
  // controlling terminal of a session outside it) is recorded as "the
  // external terminal", which restore --shell-job connects to its own.
  bool shell_job = false;
};

}  // namespace stasis::kinds
