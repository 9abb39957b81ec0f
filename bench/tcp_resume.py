#!/usr/bin/env python3
"""Benchmark (issue #5, quick resumption): how soon a busy TCP connection
flows again after a restore, with the client OUTSIDE the checkpointed tree.

An echo server (python3) is dumped and restored while a client streams
numbered lines to it every millisecond and reads the echoes. The image goes
to tmpfs. For each run it reports
  - gap: from the last echoed byte before the dump (the last one before
    `stasis dump` returned: bytes flow until the lock goes up) to the first
    echo of a line sent after the dump: the client's stall;
  - resume: from the end of `stasis restore` (the process exits once the
    tree runs) to that first new echo (0 if it came before the end), and
  - byte: from the end of `stasis restore` to the first byte of any kind
    (echoes sent before the dump and retransmitted count too);
plus stasis's own dump and restore times. --pause holds the image between
dump and restore, as a bigger image or a copy to another machine would; the
peer's retransmissions back off meanwhile (200 ms, 400 ms, ...). Prints the medians of --runs.
Every line must come back once and in order, or the run fails.
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "system"))
from tcp_lib import ECHO_SERVER, kill, start_server  # noqa: E402

DUMP_RE = re.compile(r"([\d.]+) ms total")
RESTORE_RE = re.compile(r"restored pid .* in ([\d.]+) ms")


def run_once(stasis, work, interval, after, pause):
    server, port = start_server(ECHO_SERVER, os.path.join(work, "server.log"), fail="server did not start")
    restored = None
    img = tempfile.mkdtemp(prefix="stasis-bench-tcp-", dir="/dev/shm")
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(0.2)
    arrivals, lines, errors, stop = [], [], [], threading.Event()

    def reader():
        buf = b""
        try:
            while not (stop.is_set() and len(lines) == sent[0]):
                try:
                    d = sock.recv(65536)
                except socket.timeout:
                    if stopped_at[0] and time.monotonic() - stopped_at[0] > 10:
                        errors.append("echoes missing 10 s after the end")
                        return
                    continue
                if not d:
                    errors.append("connection closed by the server")
                    return
                now = time.monotonic()
                buf += d
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    lines.append(int(line))
                arrivals.append((now, lines[-1] if lines else -1))
        except OSError as e:
            errors.append(f"{type(e).__name__}: {e}")

    sent = [0]
    stopped_at = [0.0]

    def writer():
        try:
            while not stop.is_set():
                sock.sendall(b"%d\n" % sent[0])
                sent[0] += 1
                time.sleep(interval)
        except OSError as e:
            errors.append(f"send: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        d = subprocess.run([stasis, "dump", "-t", str(server.pid), "-D", img], capture_output=True, text=True)
        server.wait()
        t_dumped = time.monotonic()
        n_dumped = sent[0]
        if d.returncode != 0:
            raise SystemExit("dump failed: " + d.stderr)
        time.sleep(pause)  # a bigger image, or a copy to another machine
        r = subprocess.run([stasis, "restore", "-D", img], capture_output=True, text=True)
        t_restored = time.monotonic()
        if r.returncode != 0:
            raise SystemExit("restore failed: " + r.stderr)
        restored = int(r.stdout.split()[-1])
        time.sleep(after)
        stop.set()
        threads[1].join()
        stopped_at[0] = time.monotonic()
        threads[0].join(timeout=15)
        if errors:
            raise SystemExit("FAIL: " + "; ".join(errors))
        if lines != list(range(sent[0])):
            raise SystemExit(f"FAIL: {len(lines)} of {sent[0]} lines echoed, or out of order")
        # The first echo of a line sent after the dump returned: the stream
        # itself flows again (earlier bytes may be echoes the server had sent
        # before the dump, retransmitted).
        last_before = max(t for t, _ in arrivals if t < t_dumped)
        first_byte = next((t for t, _ in arrivals if t > t_restored), None)
        first_new = next((t for t, n in arrivals if n >= n_dumped), None)
        resume = max(first_new - t_restored, 0.0) if first_new else float("inf")
        return {
            "gap": (first_new - last_before) * 1000,
            "byte": (first_byte - t_restored) * 1000 if first_byte else float("inf"),
            "resume": resume * 1000,
            "dump": float(DUMP_RE.search(d.stderr)[1]),
            "restore": float(RESTORE_RE.search(r.stderr)[1]),
            "lines": sent[0],
        }
    finally:
        stop.set()
        sock.close()
        kill(server.pid, restored)
        shutil.rmtree(img, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", default=shutil.which("stasis") or "build/stasis")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--interval", type=float, default=0.001, help="seconds between the client's lines")
    ap.add_argument("--pause", type=float, default=0.3,
                    help="seconds between the dump and the restore (the peer's retransmissions back off)")
    ap.add_argument("--after", type=float, default=2.0, help="seconds of streaming after the restore")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="stasis-bench-")
    rows = []
    try:
        for i in range(a.runs):
            row = run_once(a.stasis, work, a.interval, a.after, a.pause)
            rows.append(row)
            print(f"run {i + 1}: gap {row['gap']:6.1f} ms  restore-end -> first new echo {row['resume']:6.1f} ms  "
                  f"(first byte {row['byte']:6.1f} ms) "
                  f"(dump {row['dump']:.1f} ms, restore {row['restore']:.1f} ms, {row['lines']} lines echoed)",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in rows) for k in ("gap", "resume", "byte", "dump", "restore")}
    print(f"median of {a.runs} (pause {a.pause * 1000:.0f} ms): gap {med['gap']:.1f} ms, "
          f"restore-end -> first new echo {med['resume']:.1f} ms (max {max(r['resume'] for r in rows):.1f} ms), "
          f"first byte {med['byte']:.1f} ms, "
          f"dump {med['dump']:.1f} ms, restore {med['restore']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
