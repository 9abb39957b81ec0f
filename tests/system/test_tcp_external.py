#!/usr/bin/env python3
"""A client outside the checkpointed tree streams numbered words through an
echo server inside it, across a dump and a restore. Every word must come
back once, in order, with no reset; prints the longest stall the client saw.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

SERVER = r"""
import socket, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 0))
l.listen(4)
print(l.getsockname()[1], flush=True)
c, _ = l.accept()
while True:
    d = c.recv(65536)
    if not d:
        break
    c.sendall(d)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", required=True)
    ap.add_argument("--words", type=int, default=400)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="stasis-tcp-")
    log = open(os.path.join(work, "server.log"), "w+")
    server = subprocess.Popen(["/usr/bin/python3", "-c", SERVER], stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    restored = None
    try:
        deadline = time.time() + 10
        while not open(log.name).read().strip():
            if time.time() > deadline:
                raise SystemExit("FAIL: server did not start")
            time.sleep(0.02)
        port = int(open(log.name).read().split()[0])
        sock = socket.create_connection(("127.0.0.1", port))
        got, stalls, errors = [], [0.0], []

        def reader():
            buf, last = b"", time.monotonic()
            try:
                while len(got) < a.words:
                    d = sock.recv(65536)
                    if not d:
                        errors.append("connection closed by the server")
                        return
                    now = time.monotonic()
                    stalls[0] = max(stalls[0], now - last)
                    last = now
                    buf += d
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        got.append(int(line.split()[1]))
            except OSError as e:
                errors.append(f"{type(e).__name__}: {e}")

        t = threading.Thread(target=reader)
        t.start()
        for i in range(a.words):
            sock.sendall(f"word {i}\n".encode())
            time.sleep(0.005)
            if i == a.words // 3:
                img = os.path.join(work, "img")
                d = subprocess.run([a.stasis, "dump", "-t", str(server.pid), "-D", img],
                                   capture_output=True, text=True)
                server.wait()
                if d.returncode != 0:
                    raise SystemExit("FAIL: dump: " + d.stderr)
                time.sleep(0.3)  # the peer keeps sending into the lock meanwhile
                r = subprocess.run([a.stasis, "restore", "-D", img], capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit("FAIL: restore: " + r.stderr)
                restored = int(r.stdout.split()[-1])
        t.join(timeout=30)
        if errors:
            raise SystemExit("FAIL: " + "; ".join(errors))
        if got != list(range(a.words)):
            missing = sorted(set(range(a.words)) - set(got))[:10]
            raise SystemExit(f"FAIL: {len(got)} words echoed, out of order or missing (first missing {missing})")
        print(f"{a.words} words echoed once and in order; longest stall {stalls[0] * 1000:.0f} ms")
        print("1 passed, 0 failed")
        return 0
    finally:
        for pid in (server.pid, restored):
            try:
                if pid:
                    os.kill(pid, 9)
            except OSError:
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
