// What a kind sees while it dumps or restores.
//
// Dump side: the task is held in a ptrace stop; fds arrive stolen with
// pidfd_getfd (so they share the task's open file description), plus what
// /proc says of them. Restore side: the object is created here, in the
// restorer, and later pulled into the puppet with pidfd_getfd; kinds never
// know how it gets there or where the image goes.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <typeindex>
#include <utility>
#include <vector>

#include "kinds/policy.h"
#include "late.pb.h"
#include "process.pb.h"
#include "sys/flow.h"
#include "sys/log.h"
#include "sys/proc.h"
#include "sys/result.h"
#include "sys/tracee.h"
#include "sys/unique_fd.h"

namespace stasis::kinds {

// A stopped task that runs our system calls, with a scratch area in its
// address space for their in/out arguments.
class RemoteTask {
 public:
  RemoteTask(pid_t pid, sys::Injector& injector, uint64_t scratch, size_t scratch_size)
      : pid_(pid), injector_(injector), scratch_(scratch), scratch_size_(scratch_size) {}

  pid_t pid() const { return pid_; }
  sys::Injector& injector() { return injector_; }
  uint64_t scratch() const { return scratch_; }
  size_t scratch_size() const { return scratch_size_; }

  // Copies len bytes to scratch + offset and returns that remote address.
  Result<uint64_t> Put(const void* data, size_t len, size_t offset = 0);
  Status Get(uint64_t remote, void* out, size_t len);

  // Pulls the restorer's fd `local_fd` into the task (pidfd_getfd through
  // the restorer's pidfd the task holds) and returns its number there.
  void set_restorer_pidfd(int fd_in_task) { restorer_pidfd_ = fd_in_task; }
  // The operation's log (sys/env.h), for what a kind changes on its own and
  // must say (a hard rlimit lowered); nullptr: said nowhere.
  void set_log(Logger* log) { log_ = log; }
  Logger* log() const { return log_; }
  Result<int> PullFd(int local_fd);
  // Pulls local_fd in, calls fn(remote_fd), closes the remote fd.
  template <typename Fn>
  Status WithPulledFd(int local_fd, Fn fn) {
    int remote = STASIS_TRY(PullFd(local_fd));
    Status status = fn(remote);
    Result<long> closed = Call("close", 3 /* SYS_close */, remote);
    if (!status.ok()) return status;
    if (!closed.ok()) return std::move(closed).error();
    return Ok();
  }

  template <typename... Args>
  Result<long> Call(const char* name, long nr, Args... args) {
    return injector_.Call(name, nr, static_cast<uint64_t>(args)...);
  }

 private:
  pid_t pid_;
  sys::Injector& injector_;
  uint64_t scratch_;
  size_t scratch_size_;
  int restorer_pidfd_ = -1;
  Logger* log_ = nullptr;
};

// One fd of the dumped task, as the checkpoint layer found it.
struct FdDumpInput {
  pid_t pid = 0;  // host pid
  int fd = -1;
  sys::UniqueFd local;     // the same open file description, in the dumper
  struct stat st = {};     // fstat of local
  std::string link;        // readlink /proc/PID/fd/N
  sys::proc::FdInfo info;  // /proc/PID/fdinfo/N
};

// The fds of every task being dumped, for kinds whose object has several
// ends (a pipe must find its other end inside the tree).
struct FdIndexEntry {
  pid_t pid;
  int fd;
  std::string link;
  uint32_t flags;
};

// Where the dump reads an object's contents from, once per object.
struct ContentSource {
  uint64_t file_id;   // the File whose id owns the content records
  uint64_t dev, ino;  // the object
  std::string path;   // /proc/PID/fd/N or /proc/PID/map_files/<range>
  uint64_t size;
};

// A read that takes something from the tree (accept() of a connection
// waiting in a listener's queue), run only at the dump's point of no
// return: the image is otherwise complete and the tree will be killed.
// Everything that can be checked without taking is checked before, at
// dump time; a --leave-running dump is refused with `what` and `why`.
struct LateStep {
  std::string what;  // the object: "pid 4 fd 5 (socket:[6], 127.0.0.1:80)"
  std::string why;   // what would be taken: "2 connections waiting in its accept queue"
  std::function<Result<image::LateRecord>()> run;
};

// What kinds keep across the files of one dump or restore (a pipe's ends,
// the tree's unix socket graph), one slot per type, made empty on first
// use. Each kind defines its own state type in its own file, so the
// contexts below know no kind.
class KindStates {
 public:
  template <typename T>
  T& Get() {
    auto [it, fresh] = slots_.try_emplace(std::type_index(typeid(T)));
    if (fresh) it->second = std::make_shared<T>();
    return *static_cast<T*>(it->second.get());
  }

 private:
  std::map<std::type_index, std::shared_ptr<void>> slots_;
};

struct DumpContext {
  DumpPolicy policy;
  std::vector<FdIndexEntry> fd_index;
  // Objects whose contents the dump writes after the files (shmem.h),
  // once each: handed to the dump orchestration, which writes them.
  std::vector<ContentSource> content_sources;
  // Every fd of the tree, with its stolen description: a socket looks for
  // its peer among them.
  std::vector<const FdDumpInput*> inputs;
  // Descriptions a kind changed for the dump and must put back if the tree
  // keeps running (a dump that fails, or --leave-running): called then.
  // When the tree is killed instead they are dropped, unrun.
  std::vector<std::function<void()>> undo_if_kept;
  // File id of each fd of the task being dumped, assigned before any kind
  // dumps, so a kind can refer to other files (epoll targets).
  std::map<int, uint64_t> file_of_fd;
  // Run at the point of no return, in order; their records go into the
  // image after the pages (image::RecordType::kLate).
  std::vector<LateStep> late;
  // The network lock on the tree's connections to outside peers
  // (net/netlock.h), taken by the dump before any fd is dumped for every
  // flow the kinds declared (FdKind::flows). Holds `flow` (the kernel may
  // have finished a handshake since) and returns the lock's name, for the
  // image: the restore lifts it. Empty in tests that dump no connection.
  std::function<Result<std::string>(const sys::TcpFlow& flow)> hold_flow;

  // The state of kind T for this dump: ctx.State<pipe::DumpState>().
  template <typename T>
  T& State() {
    return states_.Get<T>();
  }

 private:
  KindStates states_;
};

struct RestoreContext {
  // Files restored so far: image file id -> fd in the restorer. Kinds that
  // restore after the others (FdKind::restore_last) find their targets here.
  std::map<uint64_t, int> local_fds;
  // Run once every File exists, in order: a TCP socket leaves repair mode
  // only when its peer exists too.
  std::vector<std::function<Status()>> finishers;
  // What must reach an outside peer once the network lock that held its
  // connection (net/netlock.h) is lifted, after the finishers ran (every
  // socket is out of repair mode, so what the lock kept reaches them) and
  // an isolated session's link is up again (the lock of all its flows at
  // once, net/netlock.h kLinkLock). The restore lifts each lock named once,
  // nudges the peer if asked (net/tcp_nudge.h), then runs the step.
  struct AfterUnlock {
    std::string lock;
    std::optional<sys::PeerNudge> nudge;
    std::function<Status()> run;
  };
  std::vector<AfterUnlock> after_unlock;
  // Descriptions the restorer keeps until the end (an object's read-write
  // handle when the task only had a read-only one).
  std::vector<sys::UniqueFd> keep_alive;
  // restore --shell-job: the external terminal is the restorer's stdin.
  bool shell_job = false;

  // The state of kind T for this restore: ctx.State<pipe::RestoreState>().
  template <typename T>
  T& State() {
    return states_.Get<T>();
  }

 private:
  KindStates states_;
};

// What a late record (LateStep) is applied with: the tree is built, every
// process holds its fds, nothing runs yet. The restorer still holds each
// File's description, shared with the processes.
struct LateRestore {
  const std::vector<image::File>* files;           // the image's File records
  const std::map<uint64_t, sys::UniqueFd>* local;  // by File id
  // The restorer's fd of the first File of `kind` for which match(file)
  // holds; -1 when none.
  template <typename Match>
  std::pair<const image::File*, int> Find(const std::string& kind, Match match) const {
    for (const image::File& f : *files) {
      if (f.kind() != kind || !match(f)) continue;
      auto it = local->find(f.id());
      return {&f, it == local->end() ? -1 : it->second.get()};
    }
    return {nullptr, -1};
  }
};

// Describes an fd for error messages: "pid 42 fd 7 (pipe:[1234])".
std::string DescribeFd(pid_t pid, int fd, const std::string& link);

}  // namespace stasis::kinds
