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
  // Set by a migration to another machine: a TCP connection (or connected
  // UDP socket) whose peer is not a socket of the tree is refused, naming
  // it, since the tree's address stays behind on this host and the peer
  // could not reach it there. An isolated session is exempt (the dump
  // ignores this for it): its address and MAC move with it.
  bool moving_host = false;
};

}  // namespace stasis::kinds
