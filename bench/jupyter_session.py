#!/usr/bin/env python3
"""Benchmark: the flagship Jupyter session (tests/system/test_jupyter_session.py),
with a small kernel and with 1 GiB of kernel state.

The session is jupyter-server run as `nobody`, a kernel holding state (an
array of --big-mib MiB, an sqlite3 transaction, a thread), a second kernel
busy in a loop and a terminal running a job; the test's websockets stay open.
Each run dumps the session (killed), restores it, checks it, then dumps it
live with --leave-running. Images go to tmpfs (/dev/shm). Prints one row per
run and the medians: stasis's own dump and restore times, the frozen time of
the live dump, and the image size.
"""
import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "system"))
import jupyter_lib as jl  # noqa: E402
from test_jupyter_session import Scenario  # noqa: E402

DUMP_RE = re.compile(r"image ([\d.]+) MiB, ([\d.]+) ms total, frozen ([\d.]+) ms")
RESTORE_RE = re.compile(r"restored pid .* in ([\d.]+) ms")
PAGES_RE = re.compile(r"pages: (\d+) pre-copied, (\d+) read while frozen")


def measure(stasis, big_mib, runs):
    work = tempfile.mkdtemp(prefix="stasis-bench-jup-")
    os.chmod(work, 0o755)
    images = tempfile.mkdtemp(prefix="stasis-bench-jup-", dir="/dev/shm")
    s = jl.JupyterSession(stasis, work, f"bench-{os.getpid()}-{big_mib}")
    rows = []
    try:
        s.start()
        sc = Scenario(s, big_mib, terminal=True)
        sc.build()
        sc.cycles_done = 0
        for i in range(runs):
            shutil.rmtree(images, ignore_errors=True)
            _, dump_msg = s.dump(images)
            image_mib, dump_ms, _ = map(float, DUMP_RE.search(dump_msg).groups())
            _, restore_msg = s.restore(images)
            restore_ms = float(RESTORE_RE.search(restore_msg)[1])
            sc.check(sc.cycles_done)
            sc.cycles_done += 1
            shutil.rmtree(images, ignore_errors=True)
            _, live_msg = s.dump(images, "--leave-running")
            _, live_ms, frozen_ms = map(float, DUMP_RE.search(live_msg).groups())
            sc.check(sc.cycles_done)
            sc.cycles_done += 1
            rows.append((image_mib, dump_ms, restore_ms, frozen_ms, live_ms))
            pages = PAGES_RE.search(live_msg)
            print(f"{big_mib:>8} {i:>3} {image_mib:>9.1f} {dump_ms:>8.1f} {restore_ms:>10.1f} "
                  f"{frozen_ms:>13.1f} {live_ms:>11.1f}"
                  + (f"  (pages pre-copied {pages[1]}, read frozen {pages[2]})" if pages else ""),
                  flush=True)
    finally:
        s.kill()
        shutil.rmtree(images, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return [statistics.median(r[k] for r in rows) for k in range(5)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", default=shutil.which("stasis") or "build/stasis")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="0,1024", help="kernel array sizes in MiB")
    a = ap.parse_args()
    print(f"{'big MiB':>8} {'run':>3} {'image MiB':>9} {'dump ms':>8} {'restore ms':>10} "
          f"{'live frozen ms':>13} {'live dump ms':>11}")
    medians = {size: measure(a.stasis, size, a.runs) for size in map(int, a.sizes.split(","))}
    print("\nmedians:")
    for size, (image, dump, restore, frozen, live) in medians.items():
        print(f"  kernel array {size} MiB: image {image:.1f} MiB, dump {dump:.1f} ms, "
              f"restore {restore:.1f} ms, --leave-running frozen {frozen:.1f} ms of {live:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
