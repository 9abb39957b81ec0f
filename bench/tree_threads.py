#!/usr/bin/env python3
"""Benchmark: dump and restore (a) a tree of 50 small processes (a shell
with 49 sleeping children) and (b) one process with 64 threads. The image
goes to tmpfs. Prints stasis's own dump and restore times, per process and
per thread; the median of several runs.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

DUMP_RE = re.compile(r"dumped pid .* ([\d.]+) ms total")
RESTORE_RE = re.compile(r"restored pid .* in ([\d.]+) ms")

TREE = "for i in $(seq 49); do sleep 1000 & done; echo READY; wait"
THREADS = r"""
import threading, time
for i in range(63):
    threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()
print("READY", flush=True)
time.sleep(1000)
"""


def start(argv, log):
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
    deadline = time.time() + 30
    while "READY" not in open(log.name).read():
        if time.time() > deadline:
            raise SystemExit("workload did not start")
        time.sleep(0.05)
    time.sleep(0.3)
    return p


def run_once(stasis, argv, workdir):
    with open(os.path.join(workdir, "log"), "w+") as log:
        p = start(argv, log)
        img = tempfile.mkdtemp(prefix="stasis-bench-", dir="/dev/shm")
        try:
            d = subprocess.run([stasis, "dump", "-t", str(p.pid), "-D", img], capture_output=True, text=True)
            p.wait()
            if d.returncode != 0:
                raise SystemExit("dump failed: " + d.stderr)
            r = subprocess.run([stasis, "restore", "-D", img], capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit("restore failed: " + r.stderr)
            # Killing the namespace's init (the root's parent) ends the whole tree.
            root = int(r.stdout.split()[-1])
            init = int(open(f"/proc/{root}/stat").read().rsplit(")", 1)[1].split()[1])
            os.kill(init, signal.SIGKILL)
            return float(DUMP_RE.search(d.stderr)[1]), float(RESTORE_RE.search(r.stderr)[1])
        finally:
            shutil.rmtree(img, ignore_errors=True)


def bench(name, stasis, argv, units, unit, runs, workdir):
    rows = [run_once(stasis, argv, workdir) for _ in range(runs)]
    d = statistics.median(r[0] for r in rows)
    r = statistics.median(r[1] for r in rows)
    print(f"{name:<28} dump {d:7.1f} ms ({d / units:.2f} ms/{unit})   restore {r:7.1f} ms "
          f"({r / units:.2f} ms/{unit})   [median of {runs}]", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", default=shutil.which("stasis") or "build/stasis")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="stasis-bench-")
    bench("50-process tree (sh+sleep)", args.stasis, ["/bin/sh", "-c", TREE], 50, "process", args.runs, workdir)
    bench("1 process, 64 threads", args.stasis, ["/usr/bin/python3", "-c", THREADS], 64, "thread", args.runs, workdir)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
