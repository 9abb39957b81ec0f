"""A program to migrate: memory whose every page the program can check, a
rate of writes to it, and a TCP echo server.

    migrate_workload.py --mib N [--write-mib-s R] [--port P] OUT

Page i of an N MiB buffer holds one byte value repeated, values[i] (a side
table): each tick (20 ms) the program rewrites pages at R MiB/s in order and
appends "tick T ok" to OUT; once a second it checks every page against its
table and writes "CORRUPT page I: ..." and exits 3 on a difference. It also
checks CLOCK_MONOTONIC never goes back ("CLOCK BACK" and exit 4). With
--port it echoes every connection on 0.0.0.0:P (one thread each).
"""

from __future__ import annotations

import argparse
import mmap
import os
import socket
import sys
import threading
import time

PAGE = 4096


def echo(conn: socket.socket) -> None:
    with conn:
        while True:
            d = conn.recv(65536)
            if not d:
                return
            conn.sendall(d)


def serve(port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(16)
    while True:
        c, _ = listener.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()


def check(buf: mmap.mmap, values: bytearray, out) -> None:
    for i, v in enumerate(values):
        page = buf[i * PAGE : (i + 1) * PAGE]
        if page != bytes([v]) * PAGE:
            bad = next(j for j, b in enumerate(page) if b != v)
            out.write(f"CORRUPT page {i}: byte {bad} is {page[bad]}, want {v}\n")
            out.flush()
            sys.exit(3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--write-mib-s", type=float, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--huge", action="store_true", help="MADV_HUGEPAGE, as numpy does")
    ap.add_argument("--shared", action="store_true", help="shared anonymous memory")
    ap.add_argument("--fork", action="store_true",
                    help="fork a child that shares the memory copy-on-write and checks it")
    ap.add_argument("out")
    a = ap.parse_args()
    npages = a.mib * 256
    # Private anonymous memory, as a heap or a numpy array is (mmap(-1, n)
    # alone would be shared memory).
    buf = mmap.mmap(-1, npages * PAGE, flags=mmap.MAP_SHARED if a.shared else mmap.MAP_PRIVATE)
    if a.huge:
        buf.madvise(mmap.MADV_HUGEPAGE)
    values = bytearray(npages)
    for i in range(npages):
        values[i] = (i * 7 + 1) % 251 + 1
        buf[i * PAGE : (i + 1) * PAGE] = bytes([values[i]]) * PAGE
    if a.fork and os.fork() == 0:
        # The child keeps the parent's pages as they were at the fork.
        child_out = open(a.out + ".child", "a", buffering=1)
        while True:
            check(buf, values, child_out)
            child_out.write("child checked\n")
            time.sleep(1)
    if a.port:
        threading.Thread(target=serve, args=(a.port,), daemon=True).start()
    out = open(a.out, "a", buffering=1)
    out.write(f"ready {npages} pages\n")
    per_tick = int(a.write_mib_s * 256 * 0.02)
    cursor, tick, last_check = 0, 0, time.monotonic()
    last_mono = time.monotonic()
    while True:
        for _ in range(per_tick):
            values[cursor] = values[cursor] % 250 + 1
            buf[cursor * PAGE : (cursor + 1) * PAGE] = bytes([values[cursor]]) * PAGE
            cursor = (cursor + 1) % npages
        tick += 1
        now = time.monotonic()
        if now < last_mono:
            out.write(f"CLOCK BACK {last_mono} -> {now}\n")
            sys.exit(4)
        last_mono = now
        if now - last_check >= 1:
            check(buf, values, out)
            last_check = time.monotonic()
            out.write(f"checked {tick}\n")
        out.write(f"tick {tick} ok\n")
        time.sleep(0.02)


if __name__ == "__main__":
    main()
