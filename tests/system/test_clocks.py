#!/usr/bin/python3
"""End-to-end cases for the clocks a restored tree sees (time namespaces).

    test_clocks.py --stasis BUILD/stasis CASE

A clock program prints CLOCK_MONOTONIC, CLOCK_BOOTTIME and CLOCK_REALTIME
every 0.1 s. Each case dumps it, restores it, and compares what it prints
after the restore with the clocks the image recorded (`stasis inspect`).

There is one kernel here, so "another host" is emulated by starting the tree
in a time namespace whose clocks are far from this host's (unshare(1) with
--monotonic/--boottime offsets): to the dump, the tree's clocks are then as
far from this host's as those of a tree dumped on a host booted at another
time. The names say what each case shows:

  session_same_host       a session (its own time namespace, offsets 0) keeps
                          a continuous clock across dump and restore here,
                          and comes back in a namespace of its own
  tree_ahead_of_host      a tree whose clocks are 1e6 s ahead of this host's
                          goes on from them, not from this host's
  tree_behind_host        one whose clocks read ~30 s (a freshly booted
                          source) goes on from them: negative offsets
  host_tree_keeps_host_clock  a tree in this host's time namespace (dump -t)
                          is restored in it: no namespace, the host's clocks
  refuses_beyond_kernel_limit  a tree whose clock would pass what a time
                          namespace can show is refused, nothing left

Exit status: 0 pass, 1 fail, 77 skipped (not root, no cgroup2, no time
namespaces).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_sessions import (TIMEOUT, CaseFailure, Env, cgroup2_mount, check,  # noqa: E402
                           pid_alive, read, status_field, wait_for)

CLOCK_PROGRAM = r"""
import sys, time
while True:
    print(time.clock_gettime_ns(time.CLOCK_MONOTONIC), time.clock_gettime_ns(time.CLOCK_BOOTTIME),
          time.time_ns(), flush=True)
    time.sleep(0.1)
"""
NS = 1_000_000_000
# KTIME_SEC_MAX / 2: what a time namespace's clock may show at most.
KERNEL_LIMIT_SEC = (2**63 - 1) // NS // 2
# How far the tree's clock may run ahead of the wall time elapsed (the
# brief's bound), and behind it (slew between the host's clocks).
AHEAD_SLACK_NS = 2 * NS
BEHIND_SLACK_NS = NS // 2


def lines(path):
    out = []
    for line in (read(path) or "").splitlines():
        fields = line.split()
        if len(fields) == 3:
            out.append(tuple(int(f) for f in fields))
    return out


def recorded_clocks(env, image):
    r = subprocess.run([env.stasis, "inspect", image], capture_output=True, text=True,
                       timeout=TIMEOUT)
    check(r.returncode == 0, f"inspect failed: {r.stderr}")
    manifest = json.loads(r.stdout)["records"][0]["message"]
    c = manifest.get("clocks", {})
    return (bool(c.get("own_time_ns", False)), int(c.get("monotonic_ns", 0)),
            int(c.get("boottime_ns", 0)), int(c.get("realtime_ns", 0)))


def time_ns_of(pid):
    return os.readlink(f"/proc/{pid}/ns/time")


def check_continues(out, before, recorded):
    """The first line printed after the restore goes on from the recorded
    clocks by the wall time elapsed; returns it."""
    _, mono, boot, real = recorded
    after = wait_for(lambda: lines(out)[before:], "the restored tree's first clock line")[0]
    last = lines(out)[before - 1]
    check(last[0] <= mono and last[1] <= boot,
          f"the recorded clocks ({mono}, {boot}) are not after the last line before the dump {last}")
    wall = after[2] - real
    for name, now, was in (("CLOCK_MONOTONIC", after[0], mono), ("CLOCK_BOOTTIME", after[1], boot)):
        step = now - was
        check(step >= 0, f"{name} went back by {-step / NS:.3f} s across the restore")
        check(step <= wall + AHEAD_SLACK_NS,
              f"{name} jumped by {step / NS:.3f} s across the restore, {wall / NS:.3f} s of wall time")
        check(step >= wall - BEHIND_SLACK_NS,
              f"{name} moved by {step / NS:.3f} s across the restore, less than the "
              f"{wall / NS:.3f} s of wall time")
    return after


class Trees:
    """Trees started outside sessions and restored ones: killed at the end."""

    def __init__(self, env):
        self.env = env
        self.procs = []
        self.inits = []

    def start(self, out, offsets=None):
        """The clock program, in a time namespace with `offsets` (seconds,
        monotonic and boottime) when given; returns the program's pid."""
        cmd = ["python3", "-c", CLOCK_PROGRAM]
        if offsets is not None:
            cmd = ["unshare", "--time", "--fork", f"--monotonic={offsets[0]}",
                   f"--boottime={offsets[1]}"] + cmd
        # stderr to /dev/null: unshare writes there once its child is dumped
        # (killed), and a restore refuses a file whose size changed.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(out, "a"),
                                stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
        self.procs.append(proc)
        pid = proc.pid
        if offsets is not None:
            pid = wait_for(lambda: read(f"/proc/{proc.pid}/task/{proc.pid}/children"),
                           "unshare's child")
            pid = int(pid.split()[0])
        wait_for(lambda: len(lines(out)) >= 3, "the clock program's first lines")
        return pid

    def restore(self, image):
        r = self.env.cli("restore", "-D", image)
        check(r.returncode == 0, f"restore failed: {r.stderr}")
        # It prints the tree's host pid.
        host_pid = int(r.stdout.split()[0])
        check(pid_alive(host_pid), f"no restored tree: {r.stdout} {r.stderr}")
        self.inits.append(int(status_field(host_pid, "PPid")[0]))
        return host_pid

    def cleanup(self):
        for init in self.inits:
            try:
                os.kill(init, signal.SIGKILL)
            except OSError:
                pass
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def dump(env, pid, image, session=None):
    args = ["dump", "--session", session] if session else ["dump", "-t", str(pid)]
    r = env.cli(*args, "-D", image)
    check(r.returncode == 0, f"dump failed: {r.stderr}")


def case_session_same_host(env, trees):
    name = env.name("clk")
    out = os.path.join(env.tmp, "clk.out")
    info = env.run_detached(["/bin/sh", "-c", f"exec python3 -c '{CLOCK_PROGRAM}' >> {out} 2>&1"],
                            name)
    wait_for(lambda: len(lines(out)) >= 3, "the session's first clock lines")
    root = info["root_pid"]
    check(time_ns_of(root) != time_ns_of("self"), "a session runs in a time namespace of its own")
    check(read(f"/proc/{root}/timens_offsets").split() == ["monotonic", "0", "0", "boottime", "0",
                                                           "0"],
          f"a session's time namespace has offsets 0: {read(f'/proc/{root}/timens_offsets')}")
    image = os.path.join(env.tmp, "img")
    dump(env, None, image, session=name)
    before = len(lines(out))
    recorded = recorded_clocks(env, image)
    check(recorded[0], "the manifest says the session had its own time namespace")
    time.sleep(1.5)
    r = env.cli("restore", "-D", image)
    check(r.returncode == 0, f"restore failed: {r.stderr}")
    check_continues(out, before, recorded)
    restored = env.session(name)
    check(time_ns_of(restored["root_pid"]) != time_ns_of("self"),
          "the restored session is in a time namespace of its own")
    check(time_ns_of(restored["init_pid"]) == time_ns_of(restored["root_pid"]),
          "the restored session's init is in its time namespace")


def case_far_clock(env, trees, offset_sec):
    out = os.path.join(env.tmp, "far.out")
    pid = trees.start(out, (offset_sec, offset_sec))
    image = os.path.join(env.tmp, "img")
    dump(env, pid, image)
    before = len(lines(out))
    recorded = recorded_clocks(env, image)
    check(recorded[0], "the manifest says the tree had its own time namespace")
    host_mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    check(abs(recorded[1] - host_mono - offset_sec * NS) < 5 * NS,
          f"the recorded CLOCK_MONOTONIC {recorded[1]} is the tree's (this host's {host_mono} "
          f"+ {offset_sec} s)")
    time.sleep(1)
    host_pid = trees.restore(image)
    after = check_continues(out, before, recorded)
    host_mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    check(abs(after[0] - host_mono - offset_sec * NS) < 5 * NS,
          f"the restored tree reads CLOCK_MONOTONIC {after[0] / NS:.3f} s, not its own clock "
          f"(this host's {host_mono / NS:.3f} s + {offset_sec} s)")
    check(time_ns_of(host_pid) != time_ns_of("self"), "the restored tree has its own namespace")


def case_tree_ahead_of_host(env, trees):
    case_far_clock(env, trees, 1_000_000)


def case_tree_behind_host(env, trees):
    uptime = time.clock_gettime(time.CLOCK_MONOTONIC)
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    if uptime < 120 or boot < 120:
        print("SKIP: this host booted less than 2 minutes ago")
        sys.exit(77)
    # Both clocks of the tree start near 30 s, as on a host booted just now.
    out = os.path.join(env.tmp, "young.out")
    pid = trees.start(out, (-int(uptime) + 30, -int(boot) + 30))
    image = os.path.join(env.tmp, "img")
    dump(env, pid, image)
    before = len(lines(out))
    recorded = recorded_clocks(env, image)
    check(recorded[0] and recorded[1] < 60 * NS and recorded[2] < 60 * NS,
          f"the recorded clocks are the young tree's: {recorded}")
    time.sleep(1)
    trees.restore(image)
    after = check_continues(out, before, recorded)
    check(after[0] < 90 * NS, f"the restored tree reads CLOCK_MONOTONIC {after[0] / NS:.3f} s")


def case_host_tree_keeps_host_clock(env, trees):
    out = os.path.join(env.tmp, "host.out")
    pid = trees.start(out)
    image = os.path.join(env.tmp, "img")
    dump(env, pid, image)
    before = len(lines(out))
    recorded = recorded_clocks(env, image)
    check(not recorded[0], "the manifest says the tree was in the host's time namespace")
    time.sleep(1)
    host_pid = trees.restore(image)
    check(time_ns_of(host_pid) == time_ns_of("self"),
          "a tree that had the host's time namespace is restored in it")
    check_continues(out, before, recorded)


def case_refuses_beyond_kernel_limit(env, trees):
    uptime = int(time.clock_gettime(time.CLOCK_MONOTONIC))
    # The tree's monotonic clock 61 s short of the kernel's limit: a restore
    # that adds the seconds since the dump must pass the limit less the
    # minute Stasis keeps in hand.
    out = os.path.join(env.tmp, "limit.out")
    pid = trees.start(out, (KERNEL_LIMIT_SEC - 61 - uptime, 0))
    image = os.path.join(env.tmp, "img")
    dump(env, pid, image)
    time.sleep(2.5)
    r = env.cli("restore", "-D", image)
    check(r.returncode != 0, "the restore was refused")
    check("beyond what a time namespace can show" in r.stderr and "CLOCK_MONOTONIC" in r.stderr,
          f"the refusal names the clock and the limit: {r.stderr}")
    before = len(lines(out))
    time.sleep(0.5)
    check(len(lines(out)) == before, "nothing of the refused tree runs")


CASES = {
    "session_same_host": case_session_same_host,
    "tree_ahead_of_host": case_tree_ahead_of_host,
    "tree_behind_host": case_tree_behind_host,
    "host_tree_keeps_host_clock": case_host_tree_keeps_host_clock,
    "refuses_beyond_kernel_limit": case_refuses_beyond_kernel_limit,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stasis", required=True)
    parser.add_argument("case", choices=sorted(CASES))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("SKIP: needs root")
        return 77
    if cgroup2_mount() is None:
        print("SKIP: no cgroup2 mounted")
        return 77
    if not os.path.exists("/proc/self/ns/time"):
        print("SKIP: no time namespaces (CONFIG_TIME_NS)")
        return 77
    with tempfile.TemporaryDirectory(prefix="stasis-clocks-") as tmp:
        env = Env(os.path.abspath(args.stasis), tmp)
        trees = Trees(env)
        try:
            CASES[args.case](env, trees)
        except (CaseFailure, subprocess.TimeoutExpired) as e:
            print(f"FAIL {args.case}: {e}")
            for f in sorted(os.listdir(tmp)):
                if f.endswith((".log", ".out")):
                    print(f"--- {f}\n{(read(os.path.join(tmp, f)) or '')[-2000:]}")
            return 1
        finally:
            trees.cleanup()
            env.cleanup()
    print(f"PASS {args.case}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
