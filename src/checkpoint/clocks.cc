#include "checkpoint/clocks.h"

#include <fmt/format.h>

#include "sys/timens.h"

namespace stasis::checkpoint {
namespace {

// Every process of the tree in the root's namespace, and its children to be
// born there too: one namespace is all a restore recreates.
Status CheckOneNamespace(const std::vector<pid_t>& host_pids, uint64_t root_ns) {
  for (pid_t pid : host_pids) {
    Result<uint64_t> ns = sys::TimeNamespaceId(pid);
    if (!ns.ok() && ns.error().code() == ErrorCode::kNotFound) continue;  // a zombie
    if (!ns.ok()) return std::move(ns).error();
    if (*ns != root_ns) {
      return Error::Unsupported(fmt::format(
          "pid {} is in another time namespace than the tree's root (pid {}); a tree spread "
          "over several time namespaces is not supported",
          pid, host_pids.front()));
    }
    // Refuses a process whose children would be born elsewhere.
    STASIS_TRY(sys::ReadTimeOffsets(pid));
  }
  return Ok();
}

}  // namespace

Status RecordClocks(const std::vector<pid_t>& host_pids, image::Clocks* clocks) {
  pid_t root = host_pids.front();
  uint64_t own_ns = STASIS_TRY_CTX(sys::TimeNamespaceId(0), "dump clocks");
  uint64_t root_ns = STASIS_TRY_CTX(sys::TimeNamespaceId(root), "dump clocks");
  STASIS_TRY_CTX(CheckOneNamespace(host_pids, root_ns), "dump clocks");
  sys::TimeOffsets offsets = STASIS_TRY_CTX(sys::ReadTimeOffsets(root), "dump clocks");
  sys::ClockReading host = STASIS_TRY_CTX(sys::ReadHostClocks(), "dump clocks");
  sys::ClockReading tree = sys::Shifted(host, offsets);
  clocks->set_own_time_ns(root_ns != own_ns);
  clocks->set_monotonic_ns(tree.monotonic_ns);
  clocks->set_boottime_ns(tree.boottime_ns);
  clocks->set_realtime_ns(tree.realtime_ns);
  return Ok();
}

}  // namespace stasis::checkpoint
