// Credentials: uids, gids (real, effective, saved, fs), supplementary
// groups, the five capability sets, securebits, no_new_privs and the
// dumpable flag. Restored last: pulling fds in and every other step need
// the restorer's privileges, which the task may not have.
#pragma once

#include "kinds/process_kind.h"

namespace stasis::kinds::creds {

Status Dump(RemoteTask& task, const sys::proc::ProcStatus& status, image::Creds* out);
Status Restore(RemoteTask& task, const image::Creds& creds);

// Its row in the registry (registry.cc).
extern const ProcessKind kKind;

}  // namespace stasis::kinds::creds
