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
//
// A tree that had a time namespace of its own is restored into a new one
// (TimeNamespaceFor): the init enters it before anything else, so every
// puppet is born inside; without a new PID namespace each puppet enters it
// itself.
#pragma once

#include <sys/types.h>

#include "process.pb.h"
#include "sys/features.h"
#include "sys/log.h"
#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::restore {

struct Puppet {
  pid_t host_pid = 0;
  sys::UniqueFd pidfd;
};

// The time namespace for a tree dumped with `clocks`: none (an invalid fd)
// when the tree had the dumper's, which then keeps this host's clocks; else
// a new one whose CLOCK_MONOTONIC and CLOCK_BOOTTIME read, from now on, what
// the tree read at the dump plus the wall-clock time elapsed since
// (sys::ContinuationOffsets), however far this host's clocks are from the
// dumping host's. Refuses what the kernel cannot show, and a kernel without
// time namespaces. Says the offsets in `log` (debug).
Result<sys::UniqueFd> TimeNamespaceFor(const sys::KernelFeatures& features,
                                       const image::Clocks& clocks, Logger& log);

class Spawner {
 public:
  // new_pid_ns=false creates puppets directly in the restorer's namespace.
  // With a valid `time_ns` (TimeNamespaceFor) the puppets are born in it;
  // the Spawner keeps it only as long as it needs it.
  static Result<Spawner> Start(bool new_pid_ns, sys::UniqueFd time_ns = sys::UniqueFd());
  Spawner(Spawner&&) noexcept;
  Spawner& operator=(Spawner&&) = delete;
  ~Spawner();

  // A puppet with PID `pid` (as seen in its namespace) holding the
  // restorer's pidfd at fd number `pidfd_slot`.
  Result<Puppet> CreatePuppet(pid_t pid, int pidfd_slot);
  // The init holds a copy of fd (a lazy restore's userfaultfd) until the
  // guard Commit returns is told every page is in.
  Status Hold(int fd);
  // The restore succeeded: the init stops depending on the restorer. With
  // guard (a lazy restore, new PID namespace), it returns the guard: the
  // init kills the whole tree if the guard closes before PagesIn(guard),
  // e.g. because the restorer died while pages were still to come. Without
  // a new PID namespace there is no init and no guard (an invalid fd).
  Result<sys::UniqueFd> Commit(pid_t root_pid, bool guard = false);
  pid_t init_host_pid() const { return init_pid_; }

 private:
  Spawner() = default;
  bool new_pid_ns_ = false;
  pid_t init_pid_ = 0;     // host pid of the namespace init, 0 without one
  sys::UniqueFd control_;  // socket to the init
  sys::UniqueFd restorer_pidfd_;
  sys::UniqueFd time_ns_;  // entered by each puppet without a new PID namespace
  bool committed_ = false;
};

// Every page of a lazy restore is in: the init lets the tree go on without
// the restorer.
Status PagesIn(sys::UniqueFd guard);

}  // namespace stasis::restore
