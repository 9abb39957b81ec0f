#!/usr/bin/env python3
"""Benchmark: dump and restore a python3 process holding 1 GiB of touched memory.

The image goes to tmpfs (/dev/shm), so the figures measure the engine, not a
disk. Prints one row per run and the median; times are stasis's own (from
seize to kill for the dump, from opening the image to release for restore).
With --stream the image goes through a pipe instead (`stasis dump -o - |
stasis restore -i -`, the restore spooling to /dev/shm): the restore's own
time then starts once the stream is whole, and the "pipe ms" column is the
wall time of the whole pipeline.
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
import os, random, signal, sys, time
size = int(sys.argv[1])
# Random bytes (a 16 MiB random block repeated): no page is all zero, so
# zero-page elision skips nothing.
block = random.randbytes(1 << 24)
buf = bytearray(size)
for off in range(0, size, len(block)):
    buf[off:off + len(block)] = block[:size - off]
print("READY", flush=True)
signal.signal(signal.SIGUSR2, lambda *a: None)
signal.pause()
print("checksum-ok" if buf[::4096].count(0) < len(buf) // 4096 else "bad", flush=True)
"""

DUMP_RE = re.compile(r"dumped pid .*: ([\d.]+) MiB resident, image ([\d.]+) MiB, ([\d.]+) ms total, frozen ([\d.]+) ms")
RESTORE_RE = re.compile(r"restored pid .* in ([\d.]+) ms")


def stream_once(stasis, pid, restore_args=()):
    """dump -o - | restore -i -: (dump stderr, restore stdout, restore stderr, wall ms)."""
    read_end, write_end = os.pipe()
    env = dict(os.environ, TMPDIR="/dev/shm")
    t0 = time.monotonic()
    r = subprocess.Popen([stasis, "restore", "-i", "-", *restore_args], stdin=read_end, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    d = subprocess.Popen([stasis, "dump", "-t", str(pid), "-o", "-"], stdin=subprocess.DEVNULL,
                         stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(read_end)
    os.close(write_end)
    _, dump_err = d.communicate()
    restore_out, restore_err = r.communicate()
    wall_ms = (time.monotonic() - t0) * 1e3
    if d.returncode != 0 or r.returncode != 0:
        raise SystemExit("stream failed: " + dump_err + restore_err)
    return dump_err, restore_out, restore_err, wall_ms


def run_once(stasis, size, workdir, restore_args=(), stream=False):
    log = open(os.path.join(workdir, "holder.log"), "w+")
    holder = subprocess.Popen(["/usr/bin/python3", "-c", HOLDER, str(size)], stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              start_new_session=True, close_fds=True)
    deadline = time.time() + 120
    while "READY" not in open(log.name).read():
        if time.time() > deadline or holder.poll() is not None:
            raise SystemExit("holder did not start: " + open(log.name).read())
        time.sleep(0.05)
    if stream:
        dump_err, restore_out, restore_err, wall_ms = stream_once(stasis, holder.pid, restore_args)
        holder.wait()
        m, m2 = DUMP_RE.search(dump_err), RESTORE_RE.search(restore_err)
        os.kill(int(restore_out.split()[-1]), signal.SIGKILL)
        log.close()
        return float(m[1]), float(m[2]), float(m[3]), float(m2[1]), wall_ms
    img = tempfile.mkdtemp(prefix="stasis-bench-", dir="/dev/shm")
    try:
        d = subprocess.run([stasis, "dump", "-t", str(holder.pid), "-D", img], capture_output=True, text=True)
        holder.wait()
        m = DUMP_RE.search(d.stderr)
        if d.returncode != 0 or not m:
            raise SystemExit("dump failed: " + d.stderr)
        resident_mib, image_mib, dump_ms = float(m[1]), float(m[2]), float(m[3])
        r = subprocess.run([stasis, "restore", "-D", img, *restore_args], capture_output=True,
                           text=True)
        m2 = RESTORE_RE.search(r.stderr)
        if r.returncode != 0 or not m2:
            raise SystemExit("restore failed: " + r.stderr)
        restore_ms = float(m2[1])
        host_pid = int(r.stdout.split()[-1])
        os.kill(host_pid, signal.SIGKILL)
        return resident_mib, image_mib, dump_ms, restore_ms, None
    finally:
        shutil.rmtree(img, ignore_errors=True)
        log.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", default=shutil.which("stasis") or "build/stasis")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--stream", action="store_true", help="through a pipe: dump -o - | restore -i -")
    # e.g. --restore-arg=--lazy: restore ms is then until the tree runs.
    ap.add_argument("--restore-arg", action="append", default=[])
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="stasis-bench-")
    rows = []
    print(f"{'run':>3} {'resident MiB':>12} {'image MiB':>9} {'dump ms':>8} {'dump GB/s':>9} "
          f"{'restore ms':>10} {'restore GB/s':>12}" + (f" {'pipe ms':>8}" if args.stream else ""))
    for i in range(args.runs):
        res, img, dms, rms, wall = run_once(args.stasis, args.size_mib << 20, workdir, args.restore_arg,
                                            args.stream)
        gb = res * 1048576 / 1e9
        rows.append((res, img, dms, rms, wall))
        print(f"{i:>3} {res:>12.1f} {img:>9.1f} {dms:>8.1f} {gb / (dms / 1e3):>9.2f} "
              f"{rms:>10.1f} {gb / (rms / 1e3):>12.2f}" + (f" {wall:>8.1f}" if wall else ""),
              flush=True)
    res = statistics.median(r[0] for r in rows)
    dms = statistics.median(r[2] for r in rows)
    rms = statistics.median(r[3] for r in rows)
    gb = res * 1048576 / 1e9
    print(f"median: resident {res:.1f} MiB, dump {dms:.1f} ms ({gb / (dms / 1e3):.2f} GB/s), "
          f"restore {rms:.1f} ms ({gb / (rms / 1e3):.2f} GB/s)"
          + (f", pipeline {statistics.median(r[4] for r in rows):.1f} ms" if args.stream else ""))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
