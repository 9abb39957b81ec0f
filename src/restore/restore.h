// stasis restore: read an image, refuse early what this host cannot
// reproduce, create the files, then build the task in a puppet and release
// it. A restore that fails kills everything it created.
//
// The image comes from any image::Source. A stream (a pipe, a socket) is
// first read to its end into a spool file (image/endpoint.h): until its
// end the dumped tree may still hold its ports, files and locks on this
// host, and a stream that stops before its trailer (a failed dump) is
// refused before anything exists.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "image/stream.h"
#include "mem/held_pages.h"
#include "mem/lazy_pager.h"
#include "net/isolated_net.h"
#include "sys/env.h"
#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::restore {

struct RestoreResult {
  pid_t host_pid = 0;       // as this host sees it
  pid_t pid = 0;            // as the task sees itself
  pid_t init_host_pid = 0;  // the new PID namespace's init, 0 with --pid-ns=host
  double total_ms = 0;
  uint64_t pages = 0;
  size_t processes = 0;
  // Restored as a job of the restorer's terminal and process group
  // (--shell-job): the restorer should stay until the tree ends.
  bool shell_job = false;
  std::string session_name;  // from the manifest
  std::vector<std::string> session_command;
  std::optional<net::NetConfig> net;  // an isolated session's network, rebuilt
  // restore --lazy: the tree runs while this serves its pages; the caller
  // must keep it (and Wait for it) until every page is in.
  std::shared_ptr<mem::LazyPager> pager;
  // With pager, in a new PID namespace: until PagesIn(page_guard) (once
  // pager->Wait() succeeded), the namespace init kills the tree if this
  // closes, i.e. if the restorer dies before every page is in (spawn.h).
  sys::UniqueFd page_guard;
};

struct RestoreOptions {
  // Where a streamed image is spooled (an unlinked file, gone with the
  // restore); it needs room for the whole image.
  std::string spool_dir = "/var/tmp";
  bool new_pid_ns = true;  // --pid-ns=host restores into the current namespace
  // --shell-job: the image's external terminal is this process's terminal
  // (stdin, its controlling terminal), and the tree a job on it.
  bool shell_job = false;
  // Release the tree before its private anonymous pages are written: they
  // are served on fault and pushed in the background (RestoreResult::pager).
  bool lazy = false;
  // Runs once the tree is built, while every task is still stopped (e.g. to
  // move it into a session's cgroup before anything can fork); a failure
  // fails the restore.
  std::function<Status(const RestoreResult&)> before_release;
  // A migration's destination: kept records take their pages from here
  // (docs/image-format.md); without it a kept record is kCorrupt.
  std::shared_ptr<mem::HeldPages> held;
  // Deferred records declare their ranges in the page store (the lazy
  // pager waits for them; the caller feeds and closes the store through
  // RestoreResult::pager). Needs lazy. Without it a deferred record is
  // kCorrupt.
  bool deferred_allowed = false;
};

// Reports the phases "read" (with image bytes while a stream is spooled),
// "files", "tree", "pages" (page bytes written so far; the total is not
// known ahead), "release" through env.Report; refuses at once, naming
// them, when env.features lacks what a restore needs.
Result<RestoreResult> Restore(const sys::Env& env, const RestoreOptions& options,
                              image::Source& source);
// The same, sharing in the source: page records a lazy restore still holds
// after returning are then read where they lie in a mapped image instead of
// being copied.
Result<RestoreResult> Restore(const sys::Env& env, const RestoreOptions& options,
                              std::shared_ptr<image::Source> source);

}  // namespace stasis::restore
