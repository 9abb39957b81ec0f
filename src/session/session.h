// Sessions: process trees that Stasis runs and tracks by name.
//
// A session is a tree in its own PID and mount namespace whose PID 1 is a
// small stasis init, placed in its own cgroup v2 directory
// (MOUNT/stasis/<name>). `stasis run` starts one (session/run.h); a restored
// tree can be registered as one again (RegisterRestoredSession). Each session
// is described by STATE_DIR/<name>.json, written once when it starts:
//
//   {"version": 1, "name": "web", "state": "running", "init_pid": 4242,
//    "init_start_time": 123456, "root_pid": 4243,
//    "cgroup": "/sys/fs/cgroup/unified/stasis/web",
//    "command": ["python3", "app.py"], "created": "2025-01-31T12:00:00Z",
//    "created_unix": 1738324800, "origin": "run", "image": "",
//    "net": {"address": "10.83.0.2/16", "gateway": "10.83.0.1", "bridge": "stasis0",
//            "mac": "02:53:0a:53:00:02", "host_mac": "02:48:0a:53:00:02",
//            "host_link": "st0a530002"}}    ("net" only for --net=isolated)
//
// PIDs are host PIDs (as seen from the namespace of whoever reads the file).
// The stored "state" is always "running"; readers compute the real state from
// the init: a session whose init is gone (or whose PID now names another
// process, told apart by its start time) is "gone". The init removes the file
// and the cgroup itself when the session ends (session/init.h); what an init
// killed by SIGKILL leaves behind is removed by CleanupSession, which
// `stasis ps` and a new session of the same name call.
//
// Writers serialize on an flock of STATE_DIR/.lock (StateDirLock).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "net/isolated_net.h"
#include "sys/cgroup.h"
#include "sys/log.h"
#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::session {

inline constexpr char kDefaultStateDir[] = "/run/stasis/sessions";
inline constexpr char kStateDirEnv[] = "STASIS_STATE_DIR";
// Session cgroups live in MOUNT/<parent>/<name>, the parent being
// $STASIS_CGROUP_PARENT when set, else kDefaultCgroupParent: nodes emulated
// on one machine (docs/cluster.md) each take their own, as they take their
// own state directory.
inline constexpr char kDefaultCgroupParent[] = "stasis";
inline constexpr char kCgroupParentEnv[] = "STASIS_CGROUP_PARENT";
std::string CgroupParent();

// `flag` when not empty, else $STASIS_STATE_DIR when set, else the default.
std::string ResolveStateDir(const std::string& flag);
// 1 to 64 characters of [A-Za-z0-9_.-], not starting with '.' or '-': the
// name becomes a file name and a cgroup directory name.
Status ValidateName(std::string_view name);
std::string MetadataPath(const std::string& state_dir, const std::string& name);

enum class SessionState { kRunning, kGone };
const char* StateName(SessionState state);

struct SessionInfo {
  std::string name;
  pid_t init_pid = 0;            // host PID of the session's PID 1
  uint64_t init_start_time = 0;  // its /proc/PID/stat starttime; 0 = unknown
  pid_t root_pid = 0;            // host PID of the tree's root (CMD)
  std::string cgroup;            // absolute cgroup directory; "" without cgroup2
  std::vector<std::string> command;
  int64_t created_unix = 0;
  std::string origin = "run";                   // "run" or "restore"
  std::string image;                            // image a restored session came from, else ""
  std::optional<net::NetConfig> net;            // --net=isolated: its own network
  SessionState state = SessionState::kRunning;  // computed, never stored
};

// The session `name`: kNotFound when there is no such file, kCorrupt when
// it cannot be parsed. `state` tells whether its init still lives.
Result<SessionInfo> FindSession(const std::string& state_dir, const std::string& name);
// Every session of the state directory, sorted by name; none when the
// directory does not exist. Unreadable files are skipped with a warning in
// `log` rather than hiding every other session.
Result<std::vector<SessionInfo>> ListSessions(const std::string& state_dir, Logger& log);

// What a session holds right now.
struct SessionUsage {
  size_t processes = 0;       // in its cgroup, the init included
  uint64_t memory_bytes = 0;  // memory.current, or the sum of the VmRSS
  bool memory_from_cgroup = false;
};
// Host PIDs of every process of the session (its cgroup's, or the init and
// its descendants when it has no cgroup), sorted.
Result<std::vector<pid_t>> SessionProcesses(const SessionInfo& info);
Result<SessionUsage> MeasureSession(const SessionInfo& info);

// Removes what a gone session left: kills anything still in its cgroup,
// removes the cgroup, then the metadata file. Refuses a running session.
// Call with the StateDirLock held.
Status CleanupSession(const std::string& state_dir, const SessionInfo& info);

// Exclusive flock of STATE_DIR/.lock (the directory is created if missing),
// held until destruction. Check-then-create of a name happens under it.
class StateDirLock {
 public:
  static Result<StateDirLock> Acquire(const std::string& state_dir);

 private:
  explicit StateDirLock(sys::UniqueFd fd) : fd_(std::move(fd)) {}
  sys::UniqueFd fd_;
};

// With the lock held: fails (kInvalid, "session NAME is already running")
// when a live session has that name and cleans a gone one.
Status ClaimSessionName(const std::string& state_dir, const std::string& name);
// ClaimSessionName, then creates (or reuses, if it is empty) the cgroup
// MOUNT/stasis/<name>. A leftover cgroup that still holds processes is
// refused; no cgroup2 mounted is kNotFound.
Result<sys::Cgroup> ClaimSessionCgroup(const std::string& state_dir, const std::string& name);

// Writes STATE_DIR/<name>.json atomically (temporary file, then rename).
Status WriteSessionMetadata(const std::string& state_dir, const SessionInfo& info);
// Unlinks STATE_DIR/<name>.json if it still names info's init (PID and start
// time): a new session may have taken the name meanwhile. Lock held.
Status RemoveSessionMetadata(const std::string& state_dir, const SessionInfo& info);

// --- restored trees ----------------------------------------------------------

// A tree the restorer brought back, to be tracked as session `name` again.
struct RestoredSession {
  std::string name;                  // usually the dumped session's name
  pid_t init_pid = 0;                // host PID of the restore's namespace init
  pid_t root_pid = 0;                // host PID of the restored root task
  std::vector<std::string> command;  // the original command line, for ps
  std::string image_dir;             // informational
  std::optional<net::NetConfig> net;
};

// Registers a restored tree as a session: takes the lock, claims the name
// (ClaimSessionCgroup), moves the init and each of its descendants that is
// not there yet into the session cgroup, and writes the metadata with
// origin "restore". Returns what was written.
//
// Moving tasks races with their forks, so call it while the restored tasks
// are still stopped (before they are released), or claim the cgroup first
// with ClaimSessionCgroup and put the init in it before any puppet is made:
// then every task is born inside and the move here is a no-op.
// The restore's init does not remove the session on exit the way the
// `stasis run` init does (unless it calls EndSession of session/init.h):
// until then the entry shows as "gone" and is cleaned by `stasis ps`.
Result<SessionInfo> RegisterRestoredSession(const std::string& state_dir,
                                            const RestoredSession& restored);

// `root` and its descendants as /proc shows them now, sorted.
std::vector<pid_t> ProcessTree(pid_t root);

// Start time of a process (/proc/PID/stat field 22, clock ticks since boot),
// which with the PID names a process for good; kNotFound when it is gone.
Result<uint64_t> ProcessStartTime(pid_t pid);

}  // namespace stasis::session
