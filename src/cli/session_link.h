// Sessions meet dump and restore here, in the CLI layer: `stasis dump
// --session NAME` dumps a session's tree (frozen through its cgroup), and a
// restored session image is registered as a session again.
#pragma once

#include <string>

#include "checkpoint/dump.h"
#include "restore/restore.h"
#include "sys/unique_fd.h"

namespace stasis::cli {

// Fills the dump options for the running session `name`. *init_pidfd is
// set to a pidfd of the session's init, for WaitSessionEnd.
Status ResolveSessionDump(const std::string& state_dir, const std::string& name,
                          checkpoint::DumpOptions* options, sys::UniqueFd* init_pidfd);

// After a dump that killed the session's tree: waits until its init has
// exited, and removes the cgroup and state file it left if it was the init
// of a restored tree (a session's own init removes them itself), so that a
// restore right after finds the session's name free.
Status WaitSessionEnd(const std::string& state_dir, const std::string& name, int init_pidfd);

// A before_release hook for restore: registers the tree as a session (named
// `name`, or as it was dumped) while it is still stopped. The name actually
// used is stored in *registered: "NAME-2" and so on when NAME is taken
// (e.g. by the original, left running).
std::function<Status(const restore::RestoreResult&)> SessionRegistrar(const std::string& state_dir,
                                                                      const std::string& name,
                                                                      const std::string& image_dir,
                                                                      std::string* registered);

}  // namespace stasis::cli
