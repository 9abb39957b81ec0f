#!/usr/bin/env python3
"""Benchmark: how long `stasis dump --leave-running` freezes a python3 process
holding 1 GiB of touched memory, while a thread of it keeps dirtying pages.

With the pre-copy (src/mem/precopy.h) the freeze covers only the pages
written during the copy; give --stasis of an older build to compare. The
image goes to tmpfs (/dev/shm). Prints one row per dump and the medians.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HOLDER = r"""
import os, random, signal, sys, threading, time
size, dirty_mib_s = int(sys.argv[1]), float(sys.argv[2])
block = random.randbytes(1 << 24)
buf = bytearray(size)
for off in range(0, size, len(block)):
    buf[off:off + len(block)] = block[:size - off]
def dirty():
    pages = size // 4096
    per_tick = max(1, int(dirty_mib_s * 256 / 100))  # pages per 10 ms
    rnd = random.Random(1)
    while True:
        for _ in range(per_tick):
            buf[rnd.randrange(pages) * 4096] ^= 1
        time.sleep(0.01)
if dirty_mib_s > 0:
    threading.Thread(target=dirty, daemon=True).start()
print("READY", flush=True)
signal.signal(signal.SIGUSR2, lambda *a: None)
while True:
    signal.pause()
"""

DUMP_RE = re.compile(r"dumped pid .*: ([\d.]+) MiB resident, image ([\d.]+) MiB, ([\d.]+) ms total, "
                     r"frozen ([\d.]+) ms")
PAGES_RE = re.compile(r"pages: (\d+) pre-copied, (\d+) read while frozen")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", default="build/stasis")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dirty-mib-s", type=float, default=20.0, help="pages dirtied per second, in MiB")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="stasis-bench-")
    log = open(os.path.join(workdir, "holder.log"), "w+")
    holder = subprocess.Popen(["/usr/bin/python3", "-c", HOLDER, str(args.size_mib << 20),
                               str(args.dirty_mib_s)], stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    rows = []
    try:
        deadline = time.time() + 120
        while "READY" not in open(log.name).read():
            if time.time() > deadline or holder.poll() is not None:
                raise SystemExit("holder did not start: " + open(log.name).read())
            time.sleep(0.05)
        print(f"{'run':>3} {'resident MiB':>12} {'total ms':>9} {'frozen ms':>9} {'pre-copied':>10} "
              f"{'re-read':>8}")
        for i in range(args.runs):
            img = tempfile.mkdtemp(prefix="stasis-bench-", dir="/dev/shm")
            try:
                d = subprocess.run([args.stasis, "dump", "-t", str(holder.pid), "-D", img,
                                    "--leave-running"], capture_output=True, text=True)
            finally:
                shutil.rmtree(img, ignore_errors=True)
            m = DUMP_RE.search(d.stderr)
            if d.returncode != 0 or not m:
                raise SystemExit("dump failed: " + d.stderr)
            p = PAGES_RE.search(d.stderr)
            kept, reread = (int(p[1]), int(p[2])) if p else (0, 0)
            rows.append((float(m[1]), float(m[3]), float(m[4]), kept, reread))
            print(f"{i:>3} {rows[-1][0]:>12.1f} {rows[-1][1]:>9.1f} {rows[-1][2]:>9.1f} {kept:>10} "
                  f"{reread:>8}", flush=True)
            time.sleep(0.5)
    finally:
        holder.kill()
        holder.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    med = lambda k: statistics.median(r[k] for r in rows)
    print(f"median: total {med(1):.1f} ms, frozen {med(2):.1f} ms, pre-copied {med(3):.0f} pages, "
          f"re-read while frozen {med(4):.0f} pages")


if __name__ == "__main__":
    sys.exit(main())
