#include "kinds/creds.h"

#include <fmt/format.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

namespace stasis::kinds::creds {
namespace {

Result<int> LastCap() {
  std::string text = STASIS_TRY(sys::proc::ReadFile("/proc/sys/kernel/cap_last_cap"));
  return std::atoi(text.c_str());
}

struct CapSets {
  uint64_t eff, prm, inh;
};

Status Capset(RemoteTask& task, const CapSets& caps) {
  struct {
    __user_cap_header_struct header;
    __user_cap_data_struct data[2];
  } args = {};
  args.header.version = _LINUX_CAPABILITY_VERSION_3;
  for (int i = 0; i < 2; ++i) {
    args.data[i].effective = static_cast<uint32_t>(caps.eff >> (32 * i));
    args.data[i].permitted = static_cast<uint32_t>(caps.prm >> (32 * i));
    args.data[i].inheritable = static_cast<uint32_t>(caps.inh >> (32 * i));
  }
  uint64_t addr = STASIS_TRY(task.Put(&args, sizeof(args)));
  STASIS_TRY(task.Call("capset", SYS_capset, addr, addr + sizeof(args.header)));
  return Ok();
}

Status SetIds(RemoteTask& task, const image::Creds& creds) {
  std::vector<gid_t> groups(creds.groups().begin(), creds.groups().end());
  uint64_t addr = STASIS_TRY(task.Put(groups.data(), groups.size() * sizeof(gid_t)));
  STASIS_TRY(task.Call("setgroups", SYS_setgroups, groups.size(), addr));
  STASIS_TRY(task.Call("setresgid", SYS_setresgid, creds.gid(0), creds.gid(1), creds.gid(2)));
  STASIS_TRY(task.Call("setfsgid", SYS_setfsgid, creds.gid(3)));
  STASIS_TRY(task.Call("setresuid", SYS_setresuid, creds.uid(0), creds.uid(1), creds.uid(2)));
  STASIS_TRY(task.Call("setfsuid", SYS_setfsuid, creds.uid(3)));
  return Ok();
}

// The restorer's own sets: the puppet was forked from it and still has them.
Result<CapSets> OwnCaps() {
  __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (syscall(SYS_capget, &header, data) < 0) return Error::Errno("capget");
  auto join = [](uint32_t lo, uint32_t hi) { return uint64_t{lo} | (uint64_t{hi} << 32); };
  return CapSets{join(data[0].effective, data[1].effective),
                 join(data[0].permitted, data[1].permitted),
                 join(data[0].inheritable, data[1].inheritable)};
}

}  // namespace

Status Dump(RemoteTask& task, const sys::proc::ProcStatus& status, image::Creds* out) {
  for (uint32_t id : status.uid) out->add_uid(id);
  for (uint32_t id : status.gid) out->add_gid(id);
  for (uint32_t id : status.groups) out->add_groups(id);
  out->set_cap_inh(status.cap_inh);
  out->set_cap_prm(status.cap_prm);
  out->set_cap_eff(status.cap_eff);
  out->set_cap_bnd(status.cap_bnd);
  out->set_cap_amb(status.cap_amb);
  out->set_no_new_privs(status.no_new_privs);
  long bits = STASIS_TRY(task.Call("prctl(PR_GET_SECUREBITS)", SYS_prctl, PR_GET_SECUREBITS));
  out->set_securebits(static_cast<uint32_t>(bits));
  long dumpable = STASIS_TRY(task.Call("prctl(PR_GET_DUMPABLE)", SYS_prctl, PR_GET_DUMPABLE));
  out->set_dumpable(static_cast<uint32_t>(dumpable));
  return Ok();
}

Status Restore(RemoteTask& task, const image::Creds& creds) {
  if (creds.uid_size() != 4 || creds.gid_size() != 4) return Error::Corrupt("creds without 4 ids");
  int last_cap = STASIS_TRY(LastCap());
  // While ids change, keep every capability untouched; the final securebits
  // and capability sets are applied once the ids are in place.
  STASIS_TRY(task.Call("prctl(PR_SET_SECUREBITS)", SYS_prctl, PR_SET_SECUREBITS,
                       SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS));
  for (int cap = 0; cap <= last_cap; ++cap) {
    if (creds.cap_bnd() & (1ull << cap)) continue;
    STASIS_TRY(task.Call("prctl(PR_CAPBSET_DROP)", SYS_prctl, PR_CAPBSET_DROP, cap));
  }
  STASIS_TRY(SetIds(task, creds));
  // Inheritable first, so the ambient set can be raised while CAP_SETPCAP
  // is still effective.
  CapSets own = STASIS_TRY(OwnCaps());
  STASIS_TRY(Capset(task, {own.eff, own.prm, creds.cap_inh()}));
  for (int cap = 0; cap <= last_cap; ++cap) {
    if (!(creds.cap_amb() & (1ull << cap))) continue;
    STASIS_TRY(task.Call("prctl(PR_CAP_AMBIENT_RAISE)", SYS_prctl, PR_CAP_AMBIENT,
                         PR_CAP_AMBIENT_RAISE, cap, 0, 0));
  }
  STASIS_TRY(
      task.Call("prctl(PR_SET_SECUREBITS)", SYS_prctl, PR_SET_SECUREBITS, creds.securebits()));
  STASIS_TRY(Capset(task, {creds.cap_eff(), creds.cap_prm(), creds.cap_inh()}));
  if (creds.no_new_privs()) {
    STASIS_TRY(task.Call("prctl(PR_SET_NO_NEW_PRIVS)", SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
  }
  STASIS_TRY(task.Call("prctl(PR_SET_DUMPABLE)", SYS_prctl, PR_SET_DUMPABLE, creds.dumpable()));
  return Ok();
}

namespace {

Status DumpRow(const ProcessDumpInput& in, image::Process* proc) {
  return Dump(*in.task, *in.status, proc->mutable_creds());
}

Status RestoreRow(RemoteTask& task, const image::Process& proc) {
  return Restore(task, proc.creds());
}

}  // namespace

const ProcessKind kKind = {
    .name = "creds",
    .summary =
        "Credentials: uids, gids, groups, capability sets, securebits, no_new_privs, dumpable; "
        "restored per thread, last",
    .dump_phase = DumpPhase::kInjected,
    .dump = DumpRow,
    .restore_phase = RestorePhase::kCredentials,
    .restore = RestoreRow,
};

}  // namespace stasis::kinds::creds
