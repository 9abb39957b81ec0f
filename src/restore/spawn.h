// Where restored tasks come from.
//
// A puppet is a bare process with a chosen PID, created with clone3's
// set_tid, that holds one fd: a pidfd of the restorer (at a number the image
// does not use), through which it later pulls every fd it will own. Once it
// has closed everything else it idles until the restorer seizes it.
//
// By default puppets are born in a fresh PID and mount namespace whose PID 1
// is a small stasis init (forked from the restorer): it mounts a /proc of
// its own, creates puppets on request, and after Commit() reaps and forwards
// SIGTERM/SIGINT/SIGHUP to the restored root. Until Commit() the init dies
// with the restorer (PDEATHSIG), and the kernel then kills the whole
// namespace: a failed restore leaves nothing behind.
#pragma once

#include <sys/types.h>

#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::restore {

struct Puppet {
  pid_t host_pid = 0;
  sys::UniqueFd pidfd;
};

class Spawner {
 public:
  // new_pid_ns=false creates puppets directly in the restorer's namespace.
  static Result<Spawner> Start(bool new_pid_ns);
  Spawner(Spawner&&) noexcept;
  Spawner& operator=(Spawner&&) = delete;
  ~Spawner();

  // A puppet with PID `pid` (as seen in its namespace) holding the
  // restorer's pidfd at fd number `pidfd_slot`.
  Result<Puppet> CreatePuppet(pid_t pid, int pidfd_slot);
  // The restore succeeded: the init stops depending on the restorer.
  Status Commit(pid_t root_pid);
  pid_t init_host_pid() const { return init_pid_; }

 private:
  Spawner() = default;
  bool new_pid_ns_ = false;
  pid_t init_pid_ = 0;     // host pid of the namespace init, 0 without one
  sys::UniqueFd control_;  // socket to the init
  sys::UniqueFd restorer_pidfd_;
  bool committed_ = false;
};

}  // namespace stasis::restore
