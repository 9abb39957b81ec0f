#!/usr/bin/python3
"""A job of a real interactive bash, dumped with --shell-job and restored
with --shell-job from another interactive bash (criu --shell-job's case).

    test_shell_job.py --stasis BUILD/stasis

1. bash -i on a pty runs a python3 job that prints a tick every 0.2 s.
2. From outside, `stasis dump` without --shell-job is refused, naming the
   flag, and the job goes on; with it, the job is dumped (and killed), and
   the first bash gets its prompt back.
3. A second bash -i, on another pty, runs `stasis restore --shell-job`:
   the ticks go on from where they were, on the second terminal; ^Z stops
   the job (the prompt comes back, bash says Stopped), `fg` continues it,
   ^C ends it (the python job dies of KeyboardInterrupt) and stasis restore
   ends with it, giving bash its prompt back.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

try:
    import pexpect
except ImportError:  # python3-pexpect (Debian), pulled in by ipython3
    print("SKIP: no pexpect")
    sys.exit(77)

JOB = ("python3 -c 'import time\nfor i in range(100000):\n"
       "  print(\"tick\", i, flush=True); time.sleep(0.2)'")


def shell(prompt):
    env = dict(os.environ, PS1=prompt, TERM="dumb")
    sh = pexpect.spawn("bash", ["--norc", "--noprofile", "-i"], env=env, encoding="utf-8",
                       timeout=15, dimensions=(24, 80))
    sh.expect_exact(prompt)
    return sh


def child_running(parent, name):
    out = subprocess.run(["pgrep", "-P", str(parent), name], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    if len(pids) != 1:
        sys.exit(f"FAIL: expected one {name} child of bash {parent}, found {pids}")
    return pids[0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stasis", required=True)
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="stasis-shell-job-")
    img = os.path.join(tmp, "img")
    shells = []
    try:
        first = shell("ONE$ ")
        shells.append(first)
        first.sendline(JOB)
        first.expect(r"tick 3\r")
        job = child_running(first.pid, "python3")

        r = subprocess.run([args.stasis, "dump", "-t", str(job), "-D", img],
                           capture_output=True, text=True, timeout=60)
        if r.returncode == 0 or "--shell-job" not in r.stderr:
            sys.exit(f"FAIL: dump without --shell-job: exit {r.returncode}, stderr {r.stderr!r}")
        first.expect(r"tick (\d+)\r")  # left running
        r = subprocess.run([args.stasis, "dump", "-t", str(job), "-D", img, "--shell-job"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            sys.exit(f"FAIL: dump --shell-job: exit {r.returncode}: {r.stderr}")
        seen = int(first.match.group(1))
        first.expect_exact("ONE$ ")  # killed: bash has its terminal back
        last = max([seen] + [int(t) for t in re.findall(r"tick (\d+)\r", first.before)])
        print(f"dumped job {job} at tick ~{last}: {r.stderr.strip()}")

        second = shell("TWO$ ")
        shells.append(second)
        second.sendline(f"{args.stasis} restore --shell-job -D {img}")
        second.expect(r"tick (\d+)\r")
        resumed = int(second.match.group(1))
        if resumed != last + 1:
            sys.exit(f"FAIL: the restored job printed tick {resumed}, dumped near {last}")
        second.expect(r"tick (\d+)\r")
        print(f"restored on the second terminal, ticking from {resumed}")

        second.sendcontrol("z")
        second.expect_exact("TWO$ ")
        if "Stopped" not in second.before:
            sys.exit(f"FAIL: ^Z did not stop the job: {second.before[-300:]!r}")
        try:
            second.expect(r"tick \d+\r", timeout=1)
            sys.exit("FAIL: the job ticks while stopped")
        except pexpect.TIMEOUT:
            pass
        second.sendline("fg")
        second.expect(r"tick (\d+)\r")
        print(f"^Z stopped it, fg continued it at tick {second.match.group(1)}")

        second.sendcontrol("c")
        second.expect_exact("TWO$ ")
        if "KeyboardInterrupt" not in second.before:
            sys.exit(f"FAIL: ^C did not reach the job: {second.before[-300:]!r}")
        second.sendline("echo STATUS=$?")
        second.expect(r"STATUS=(\d+)")
        print(f"^C ended it; stasis restore exited with {second.match.group(1)}")
        if second.match.group(1) == "0":
            sys.exit("FAIL: stasis restore ended with 0 for a job killed by ^C")
        if subprocess.run(["pgrep", "-f", "print\\(\"tick\""], capture_output=True).stdout:
            sys.exit("FAIL: a tick job is still running")
        print("PASS")
    finally:
        for sh in shells:
            sh.close(force=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
