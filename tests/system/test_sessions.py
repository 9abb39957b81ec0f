#!/usr/bin/python3
"""End-to-end cases for sessions: `stasis run`, `stasis ps`, `stasis freeze`.

    test_sessions.py --stasis BUILD/stasis CASE

Each case uses its own temporary state directory and unique session names,
so cases may run in parallel. Real processes, real namespaces and cgroups:
needs root and a cgroup2 mount (exit 77, a ctest skip, without them).
The sessions' stdout and stderr go to files in the temporary directory.

Exit status: 0 pass, 1 fail, 77 skipped.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

TIMEOUT = 10.0


class CaseFailure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CaseFailure(msg)


def wait_for(pred, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise CaseFailure(f"timed out after {timeout}s waiting for {what}")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def pid_alive(pid):
    stat = read(f"/proc/{pid}/stat")
    return stat is not None and stat[stat.rindex(")") + 2] not in "ZX"


def status_field(pid, field):
    for line in (read(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].split()
    return None


def cgroup2_mount():
    found = []
    for line in read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        dash = fields.index("-")
        if fields[dash + 1] == "cgroup2":
            found.append(fields[4])
    for preferred in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if preferred in found:
            return preferred
    return found[0] if found else None


class Env:
    """One case's temp dir, state dir, and the sessions it started."""

    def __init__(self, stasis, tmp):
        self.stasis = stasis
        self.tmp = tmp
        self.state_dir = os.path.join(tmp, "state")
        self.tag = f"t{os.getpid()}"
        self.started = []

    def name(self, suffix):
        return f"{self.tag}-{suffix}"

    def log(self, name):
        return os.path.join(self.tmp, name + ".log")

    def run(self, args, log_name, detach=False, name=None):
        """Starts `stasis run`; returns the Popen. stdout+stderr go to a log."""
        cmd = [self.stasis, "run", "--state-dir", self.state_dir]
        if name:
            cmd += ["--name", name]
        if detach:
            cmd.append("-d")
        cmd += ["--"] + args
        out = open(self.log(log_name), "w")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.started.append(proc)
        return proc

    def run_detached(self, args, name):
        proc = self.run(args, name, detach=True, name=name)
        code = proc.wait(TIMEOUT)
        check(code == 0, f"stasis run -d exited {code}: {read(self.log(name))}")
        check(read(self.log(name)).splitlines()[0] == name, "run -d prints the session name")
        return self.session(name)

    def cli(self, *args):
        return subprocess.run([self.stasis, *args, "--state-dir", self.state_dir],
                              capture_output=True, text=True, timeout=TIMEOUT)

    def ps(self):
        r = self.cli("ps", "--json")
        check(r.returncode == 0, f"stasis ps failed: {r.stderr}")
        return {s["name"]: s for s in json.loads(r.stdout)}

    def session(self, name):
        text = wait_for(lambda: read(os.path.join(self.state_dir, name + ".json")),
                        f"session file of {name}")
        return json.loads(text)

    def wait_session_gone(self, info):
        wait_for(lambda: not os.path.exists(os.path.join(self.state_dir, info["name"] + ".json")),
                 f"session file of {info['name']} removed")
        wait_for(lambda: not os.path.exists(info["cgroup"]), f"cgroup {info['cgroup']} removed")

    def cleanup(self):
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if os.path.isdir(self.state_dir):
            for f in os.listdir(self.state_dir):
                if f.endswith(".json"):
                    info = json.loads(read(os.path.join(self.state_dir, f)) or "{}")
                    if info.get("init_pid"):
                        try:
                            os.kill(info["init_pid"], signal.SIGKILL)
                            wait_for(lambda: not pid_alive(info["init_pid"]), "a killed init")
                        except (OSError, CaseFailure):
                            pass
            self.cli("ps")  # removes what the killed sessions left


# A command that reports its pid, forks a child, holds 32 MiB and exits 42
# on SIGTERM.
WAITER = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
child = os.fork()
if child == 0:
    time.sleep(1000)
    os._exit(0)
hold = bytearray(32 << 20)
for i in range(0, len(hold), 4096):
    hold[i] = 1
print(os.getpid(), child, flush=True)
while True:
    time.sleep(1)
"""


def case_getpid_and_ps(env):
    name = env.name("ps")
    proc = env.run(["python3", "-c", WAITER], name, name=name)
    line = wait_for(lambda: (read(env.log(name)) or "").strip(), "the pid line")
    inner_pid, inner_child = map(int, line.split())
    check(inner_pid == 2, f"CMD's getpid() inside is {inner_pid}, expected 2")
    info = env.session(name)
    nspid = status_field(info["root_pid"], "NSpid")
    check(nspid == [str(info["root_pid"]), "2"], f"CMD NSpid {nspid}: host pid then 2")
    init_nspid = status_field(info["init_pid"], "NSpid")
    check(init_nspid == [str(info["init_pid"]), "1"], f"init NSpid {init_nspid}")
    check(info["state"] == "running" and info["command"][0] == "python3", f"metadata {info}")
    check(info["cgroup"].startswith(cgroup2_mount() + "/stasis/"), f"cgroup {info['cgroup']}")
    procs = sorted(int(p) for p in read(os.path.join(info["cgroup"], "cgroup.procs")).split())
    check(info["init_pid"] in procs and info["root_pid"] in procs and len(procs) == 3,
          f"cgroup.procs {procs}: init, CMD and its child")
    check(read(f"/proc/{info['root_pid']}/comm").strip().startswith("python"), "root is CMD")

    listed = env.ps()[name]
    check(listed["state"] == "running", f"ps state {listed['state']}")
    check(listed["processes"] == 3, f"ps processes {listed['processes']}")
    check(listed["memory_bytes"] >= 32 << 20, f"ps memory {listed['memory_bytes']}")
    check(listed["root_pid"] == info["root_pid"], "ps root pid")
    table = env.cli("ps").stdout
    check(name in table and "running" in table and "NAME" in table, f"ps table:\n{table}")

    proc.send_signal(signal.SIGTERM)
    code = proc.wait(TIMEOUT)
    check(code == 42, f"stasis run exited {code}; CMD exits 42 on SIGTERM")
    env.wait_session_gone(info)
    check(not pid_alive(info["root_pid"]), "CMD is gone")
    check(name not in env.ps(), "ps no longer lists it")


def case_sigterm_default(env):
    name = env.name("term")
    proc = env.run(["sleep", "1000"], name, name=name)
    info = env.session(name)
    wait_for(lambda: read(f"/proc/{info['root_pid']}/comm") == "sleep\n", "sleep to exec")
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(TIMEOUT)
    check(code == 128 + signal.SIGTERM, f"exit {code}, expected 143 (killed by SIGTERM)")
    env.wait_session_gone(info)


def case_exit_status(env):
    for args, want in ((["sh", "-c", "exit 7"], 7), (["true"], 0),
                       (["sh", "-c", "kill -KILL $$"], 128 + signal.SIGKILL),
                       (["/nonexistent/cmd"], 127)):
        proc = env.run(args, env.name("exit"))
        code = proc.wait(TIMEOUT)
        check(code == want, f"{args}: stasis run exited {code}, expected {want}")
    check(not [f for f in os.listdir(env.state_dir) if f.endswith(".json")], "no files left")


def case_orphans_die_with_cmd(env):
    # Children that outlive CMD: a daemonized one, a double-forked one and a
    # new session; CMD exits 3 once they run.
    script = ("setsid sleep 1001 & (sleep 1002 &) ; sh -c 'trap \"\" TERM HUP; sleep 1003' & "
              "echo started; sleep 1")
    name = env.name("orphans")
    proc = env.run(["sh", "-c", script + "; exit 3"], name, name=name)
    info = env.session(name)
    cg = info["cgroup"]
    pids = wait_for(lambda: [int(p) for p in (read(cg + "/cgroup.procs") or "").split()]
                    if len((read(cg + "/cgroup.procs") or "").split()) >= 6 else None,
                    "the session's processes")
    code = proc.wait(TIMEOUT)
    check(code == 3, f"exit {code}, expected CMD's 3")
    left = [p for p in pids if pid_alive(p)]
    check(not left, f"processes {left} outlived the session")
    check(not os.path.exists(cg), "the cgroup is removed")
    check(not os.path.exists(os.path.join(env.state_dir, name + ".json")), "the file is removed")

    # Detached: the init cleans up on its own when CMD exits.
    name = env.name("orphans-d")
    info = env.run_detached(["sh", "-c", "(sleep 1004 &); sleep 0.5"], name)
    check(os.path.isdir(info["cgroup"]), "the cgroup exists while it runs")
    env.wait_session_gone(info)


def case_duplicate_and_stale(env):
    name = env.name("dup")
    info = env.run_detached(["sleep", "1000"], name)
    again = env.run(["true"], name + "-again", name=name)
    code = again.wait(TIMEOUT)
    out = read(env.log(name + "-again"))
    check(code != 0 and "already running" in out, f"duplicate allowed: {code} {out}")
    check(pid_alive(info["init_pid"]), "the first session still runs")
    os.kill(info["init_pid"], signal.SIGTERM)  # forwarded to sleep, which dies
    env.wait_session_gone(info)
    code = env.run(["true"], name + "-reuse", name=name).wait(TIMEOUT)
    check(code == 0, f"the name is free again once the session ended: {code}")

    # An init that dies by SIGKILL cannot clean up: ps shows it gone once,
    # removes its cgroup and file, and the name is free again.
    stale = env.name("stale")
    info = env.run_detached(["sleep", "1000"], stale)
    os.kill(info["init_pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(info["init_pid"]), "the init to die")
    check(env.ps()[stale]["state"] == "gone", "ps shows the killed session as gone")
    check(stale not in env.ps(), "ps cleaned the gone session")
    check(not os.path.exists(info["cgroup"]), "ps removed its cgroup")
    check(not pid_alive(info["root_pid"]), "the namespace died with its init")
    info = env.run_detached(["sleep", "1000"], stale)
    os.kill(info["init_pid"], signal.SIGTERM)
    env.wait_session_gone(info)


COUNTER = r"""
import os, sys, time
n = 0
while True:
    n += 1
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(n))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.005)
"""


def case_freeze(env):
    name = env.name("freeze")
    counter_file = os.path.join(env.tmp, "counter")
    info = env.run_detached(["python3", "-c", COUNTER, counter_file], name)

    def count():
        return int(wait_for(lambda: read(counter_file), "the counter"))

    def advances(seconds):
        before = count()
        time.sleep(seconds)
        return count() - before

    wait_for(lambda: read(counter_file), "the counter to start")
    check(advances(0.2) > 0, "the counter runs")
    for mode in ("--seconds", "signal"):
        args = [env.stasis, "freeze", name, "--state-dir", env.state_dir]
        args += ["--seconds", "3"] if mode == "--seconds" else []
        freezer = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = freezer.stdout.readline()
        if not first.startswith("frozen " + name):
            raise CaseFailure(f"freeze said {first!r} {freezer.stderr.read()}")
        events = read(info["cgroup"] + "/cgroup.events")
        check("frozen 1" in events, f"cgroup.events says {events!r} ({mode})")
        state = status_field(info["root_pid"], "State")
        check(state and state[0] == "S", f"a v2-frozen task sleeps (S), got {state}")
        check(advances(0.5) == 0, f"the counter advanced while frozen ({mode})")
        if mode == "signal":
            freezer.send_signal(signal.SIGTERM)
        out, err = freezer.communicate(timeout=TIMEOUT)
        check(freezer.returncode == 0 and "thawed" in out, f"freeze: {freezer.returncode} {err}")
        check("frozen 0" in read(info["cgroup"] + "/cgroup.events"), "cgroup.events frozen 0")
        check(advances(0.3) > 0, f"the counter is stuck after thawing ({mode})")
    os.kill(info["init_pid"], signal.SIGTERM)
    env.wait_session_gone(info)


def case_env_state_dir(env):
    # STASIS_STATE_DIR instead of --state-dir.
    name = env.name("envdir")
    # CMD inherits stdout: a file, not a pipe that would stay open.
    with open(env.log(name), "w") as out:
        r = subprocess.run([env.stasis, "run", "-d", "--name", name, "--", "sleep", "1000"],
                           env=dict(os.environ, STASIS_STATE_DIR=env.state_dir),
                           stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                           timeout=TIMEOUT)
    check(r.returncode == 0 and read(env.log(name)).strip() == name,
          f"run -d: {r.returncode} {read(env.log(name))}")
    info = env.session(name)
    check(name in env.ps(), "listed from the same directory")
    os.kill(info["init_pid"], signal.SIGTERM)
    env.wait_session_gone(info)


def case_restored_dump_leaves_nothing(env):
    """A restored session dumped again (so killed) leaves no cgroup and no state file."""
    name = env.name("again")
    env.run_detached(["/bin/sleep", "1000"], name)
    for i in range(2):
        image = os.path.join(env.tmp, f"img{i}")
        r = env.cli("dump", "--session", name, "-D", image)
        check(r.returncode == 0, f"dump {i + 1} failed: {r.stderr}")
        if i == 0:
            r = env.cli("restore", "-D", image)
            check(r.returncode == 0, f"restore failed: {r.stderr}")
            restored = env.session(name)
    check(not os.path.exists(os.path.join(env.state_dir, name + ".json")),
          "the restored session's state file is gone after its dump")
    check(not os.path.exists(restored["cgroup"]),
          f"the restored session's cgroup {restored['cgroup']} is gone after its dump")


CASES = {
    "getpid_and_ps": case_getpid_and_ps,
    "sigterm_default": case_sigterm_default,
    "exit_status": case_exit_status,
    "orphans": case_orphans_die_with_cmd,
    "duplicate_and_stale": case_duplicate_and_stale,
    "freeze": case_freeze,
    "env_state_dir": case_env_state_dir,
    "restored_dump_leaves_nothing": case_restored_dump_leaves_nothing,
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
    with tempfile.TemporaryDirectory(prefix="stasis-sessions-") as tmp:
        env = Env(os.path.abspath(args.stasis), tmp)
        try:
            CASES[args.case](env)
        except (CaseFailure, subprocess.TimeoutExpired) as e:
            print(f"FAIL {args.case}: {e}")
            for f in sorted(os.listdir(tmp)):
                if f.endswith(".log"):
                    print(f"--- {f}\n{read(os.path.join(tmp, f))}")
            return 1
        finally:
            env.cleanup()
    print(f"PASS {args.case}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
