#!/usr/bin/env python3
"""A `stasis run` session, dumped by name and restored, N times in a row.

The session runs a python3 counter that keeps a running checksum of its
state. After every restore the session must be listed by `stasis ps` under
its name again, the command must still be PID 2 in its namespace, and the
counter must carry on from where it was (never restart, never go back).
With --stream the image goes through a pipe (`stasis dump --session NAME -o -
| stasis restore -i -`) instead of a directory.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

COUNTER = r"""
import os, sys, time
state = {"n": 0, "sum": 0}
while True:
    state["n"] += 1
    state["sum"] += state["n"]
    assert state["sum"] == state["n"] * (state["n"] + 1) // 2
    print(f"{os.getpid()} {state['n']}", flush=True)
    time.sleep(0.05)
"""


def last_count(log):
    lines = open(log).read().split()
    return (int(lines[-2]), int(lines[-1])) if len(lines) >= 2 else (None, 0)


def ps(stasis, state_dir):
    out = subprocess.run([stasis, "ps", "--json", "--state-dir", state_dir], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def stream(dump, restore):
    """Runs dump | restore through a pipe; returns both CompletedProcesses."""
    read_end, write_end = os.pipe()
    rp = subprocess.Popen(restore, stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    dp = subprocess.Popen(dump, stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE,
                          text=True)
    os.close(read_end)
    os.close(write_end)
    d_out, d_err = dp.communicate(timeout=60)
    r_out, r_err = rp.communicate(timeout=60)
    return (subprocess.CompletedProcess(dump, dp.returncode, d_out, d_err),
            subprocess.CompletedProcess(restore, rp.returncode, r_out, r_err))


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", required=True)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--stream", action="store_true", help="dump -o - | restore -i -")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="stasis-sess-")
    state_dir = os.path.join(work, "state")
    log = os.path.join(work, "counter.log")
    name = f"cycles-{os.getpid()}"
    script = os.path.join(work, "counter.py")
    open(script, "w").write(COUNTER)
    try:
        with open(log, "w") as out:
            subprocess.run([a.stasis, "run", "-d", "--name", name, "--state-dir", state_dir, "--",
                            "/usr/bin/python3", script], stdout=out, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, check=True, close_fds=True)
        time.sleep(0.5)
        for cycle in range(a.cycles):
            pid_before, count_before = last_count(log)
            img = os.path.join(work, f"img{cycle}")
            dump = [a.stasis, "dump", "--session", name, "--state-dir", state_dir]
            restore = [a.stasis, "restore", "--state-dir", state_dir]
            if a.stream:
                d, r = stream(dump + ["-o", "-"], restore + ["-i", "-"])
            else:
                d = subprocess.run(dump + ["-D", img], capture_output=True, text=True)
            if d.returncode != 0:
                fail(f"cycle {cycle}: dump failed: {d.stderr}")
            if not a.stream:
                time.sleep(0.1)
                if any(s["name"] == name and s["state"] == "running" for s in ps(a.stasis, state_dir)):
                    fail(f"cycle {cycle}: the session still runs after its dump")
                r = subprocess.run(restore + ["-D", img], capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"cycle {cycle}: restore failed: {r.stderr}")
            time.sleep(0.3)
            sessions = [s for s in ps(a.stasis, state_dir) if s["name"] == name]
            if not sessions or sessions[0]["state"] != "running":
                fail(f"cycle {cycle}: the restored tree is not the session {name} again: {sessions}")
            pid_after, count_after = last_count(log)
            if pid_after != 2 or pid_after != pid_before:
                fail(f"cycle {cycle}: the command is pid {pid_after} in its namespace, was {pid_before}")
            if count_after <= count_before:
                fail(f"cycle {cycle}: the counter went from {count_before} to {count_after}")
            print(f"cycle {cycle}: count {count_before} -> {count_after}; {d.stderr.strip()}", flush=True)
        print(f"{a.cycles} passed, 0 failed")
        return 0
    finally:
        for s in ps(a.stasis, state_dir):
            try:
                os.kill(s["init_pid"], 9)
            except (OSError, KeyError):
                pass
        time.sleep(0.2)
        subprocess.run([a.stasis, "ps", "--state-dir", state_dir], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
