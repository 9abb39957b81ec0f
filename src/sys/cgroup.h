// cgroup v2: find the unified hierarchy, make a cgroup for a session, move
// processes into it, read its members and usage, and freeze it.
//
// Stasis uses only cgroup v2 (the v1 freezer parks tasks in D state, where
// ptrace stops are never reported: see kernel-notes.md). On a hybrid host v2
// is mounted at /sys/fs/cgroup/unified, on a pure-v2 host at /sys/fs/cgroup.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sys/result.h"

namespace stasis::sys {

// The mount point of cgroup2 described by mountinfo text (the format of
// /proc/self/mountinfo). Prefers /sys/fs/cgroup/unified, then /sys/fs/cgroup,
// then the first cgroup2 mount seen; kNotFound when there is none.
Result<std::string> ParseCgroup2Mount(std::string_view mountinfo);
// The same, read from /proc/self/mountinfo.
Result<std::string> FindCgroup2Mount();

// One cgroup v2 directory, named by its absolute path. A plain handle: it
// owns nothing, so copies are fine and nothing is removed on destruction
// (a session's cgroup outlives the `stasis run` that made it).
class Cgroup {
 public:
  // Creates MOUNT/relative (and missing parents), or opens it if it exists,
  // where MOUNT is FindCgroup2Mount(). Each parent on the way gets the memory
  // controller enabled for its children when it offers it (best effort), so
  // memory.current exists in the leaf where the host allows it.
  static Result<Cgroup> Create(std::string_view relative);
  // An existing cgroup directory; kNotFound when it is missing.
  static Result<Cgroup> Open(std::string path);

  const std::string& path() const { return path_; }

  // Moves the whole thread group of `pid` here (cgroup.procs).
  Status AddProcess(pid_t pid) const;
  // Every process in the cgroup (cgroup.procs, host PIDs), sorted. The
  // kernel lists a PID once per thread group but may repeat it under churn.
  Result<std::vector<pid_t>> Processes() const;
  // memory.current in bytes, or nullopt when the memory controller is not
  // enabled for this cgroup (e.g. memory is bound to v1 on a hybrid host).
  Result<std::optional<uint64_t>> MemoryCurrent() const;
  // "populated" of cgroup.events: true while any process is in it or below.
  Result<bool> Populated() const;
  // SIGKILLs every process in it (cgroup.kill, 5.14+; otherwise one kill(2)
  // per listed PID) and waits up to `timeout` until it is empty.
  Status KillAll(std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;
  // rmdir. Succeeds when the directory is already gone. A cgroup that still
  // holds processes cannot be removed (EBUSY): empty it first. Retries EBUSY
  // until `timeout`, since exiting tasks leave a moment after their exit.
  Status Remove(std::chrono::milliseconds timeout = std::chrono::milliseconds(500)) const;

 private:
  explicit Cgroup(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// A cgroup held frozen (cgroup.freeze) for the lifetime of this object.
//
// Freeze() returns only once the kernel reports "frozen 1" in cgroup.events:
// then every task is stopped in the kernel's freezer (shown as S, not D, and
// still seizable with ptrace), including tasks forked meanwhile. The
// destructor puts cgroup.freeze back to what it was before Freeze() (so, 0,
// a thaw, unless someone else had frozen the cgroup first), on every path.
class FrozenCgroup {
 public:
  static Result<FrozenCgroup> Freeze(const Cgroup& cgroup,
                                     std::chrono::milliseconds timeout = std::chrono::seconds(10));
  FrozenCgroup(FrozenCgroup&& other) noexcept;
  FrozenCgroup& operator=(FrozenCgroup&&) = delete;
  FrozenCgroup(const FrozenCgroup&) = delete;
  ~FrozenCgroup();

  // Thaws now and reports a failure the destructor would have to swallow.
  Status Thaw();
  const std::string& path() const { return path_; }

 private:
  FrozenCgroup(std::string path, bool was_frozen)
      : path_(std::move(path)), was_frozen_(was_frozen) {}
  std::string path_;  // empty once thawed or moved from
  bool was_frozen_ = false;
};

}  // namespace stasis::sys
