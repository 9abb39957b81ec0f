// Time namespaces (time_namespaces(7), CONFIG_TIME_NS, Linux 5.6+): what
// keeps a tree's CLOCK_MONOTONIC and CLOCK_BOOTTIME going on from where they
// were when it moves to a host whose clocks count from another boot.
//
// A time namespace shifts those two clocks (the vDSO path included) by
// offsets relative to the host's: the initial namespace's clocks. Offsets are
// written to /proc/PID/timens_offsets of a process whose children will be
// born in the namespace, and only until the first process enters it. Writing
// them needs CAP_SYS_TIME; entering one (setns) CAP_SYS_ADMIN and a
// single-threaded caller. CLOCK_REALTIME is never shifted.
//
// On a kernel without time namespaces every process is in the host's:
// offsets read as 0 and TimeNamespaceId as 0.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "sys/result.h"
#include "sys/unique_fd.h"

namespace stasis::sys {

inline constexpr int64_t kNsPerSec = 1000000000;
// The kernel refuses offsets that would make a namespace's clock negative or
// larger than KTIME_SEC_MAX / 2 seconds (kernel/time/namespace.c), about 146
// years.
inline constexpr int64_t kMaxNamespaceClockSec = (INT64_MAX / kNsPerSec) / 2;

// CLOCK_MONOTONIC and CLOCK_BOOTTIME shifts, in nanoseconds.
struct TimeOffsets {
  int64_t monotonic_ns = 0;
  int64_t boottime_ns = 0;
  bool operator==(const TimeOffsets&) const = default;
};

// Three clocks read one right after the other, in nanoseconds.
struct ClockReading {
  int64_t monotonic_ns = 0;
  int64_t boottime_ns = 0;
  int64_t realtime_ns = 0;
};

// Parses /proc/PID/timens_offsets ("monotonic <sec> <nsec>" and "boottime
// <sec> <nsec>" lines; a clock may also be named by its id, 1 or 7).
Result<TimeOffsets> ParseTimeOffsets(std::string_view text);
// The same format, seconds rounded down so that nanoseconds are 0..999999999
// as the kernel wants them (-1.5 s is "-2 500000000").
std::string FormatTimeOffsets(const TimeOffsets& offsets);

// The inode of /proc/PID/ns/time (PID 0: the caller), which names the
// namespace; 0 when the kernel has no time namespaces.
Result<uint64_t> TimeNamespaceId(pid_t pid);

// The offsets of the namespace PID is in (PID 0: the caller). Refuses a
// process whose children would be born in another namespace than its own
// (it unshared one and forked nothing yet): /proc/PID/timens_offsets
// describes that one.
Result<TimeOffsets> ReadTimeOffsets(pid_t pid);

// The caller's clocks now.
ClockReading ReadClocks();
// The host's (initial namespace's) clocks now: the caller's less its
// namespace's offsets.
Result<ClockReading> ReadHostClocks();

// What a namespace with `offsets` shows now, given the host's clocks.
ClockReading Shifted(const ClockReading& host, const TimeOffsets& offsets);

// The offsets that make a tree's clocks go on from `recorded` (what it saw
// when it was frozen): on the host whose clocks are `host_now`, the tree
// then reads recorded + max(0, realtime elapsed since). It never sees its
// clocks go back, even when the host's wall clock is behind the recording
// one; after the restore they run at the host's pace. Refuses (kCorrupt) a
// negative recorded clock and (kUnsupported) one the kernel cannot show:
// beyond kMaxNamespaceClockSec, less a minute for the time between this
// computation and the write.
Result<TimeOffsets> ContinuationOffsets(const ClockReading& recorded, const ClockReading& host_now);

// A new time namespace with `offsets` that no process has entered yet,
// held by the returned fd (its /proc/TID/ns/time_for_children, opened by a
// short-lived thread that made it). Needs CAP_SYS_ADMIN and CAP_SYS_TIME.
Result<UniqueFd> CreateTimeNamespace(const TimeOffsets& offsets);

// Moves the calling process, which must be single-threaded, and its future
// children into the namespace of `fd`. Returns 0 or an errno; only raw
// system calls, so a freshly forked child of a threaded process may call it.
int EnterTimeNamespace(int fd);

}  // namespace stasis::sys
