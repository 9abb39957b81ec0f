#!/usr/bin/env python3
"""A client outside the checkpointed tree streams numbered words through an
echo server inside it, across a dump and a restore. Every word must come
back once, in order, with no reset; prints the longest stall the client saw.
"""
import argparse
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time

from tcp_lib import ECHO_SERVER, dump_and_restore, kill, read_words, start_server


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", required=True)
    ap.add_argument("--words", type=int, default=400)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="stasis-tcp-")
    server = None
    restored = None
    try:
        server, port = start_server(ECHO_SERVER, os.path.join(work, "server.log"))
        sock = socket.create_connection(("127.0.0.1", port))
        got, stalls, errors = [], [0.0], []
        t = threading.Thread(target=read_words, args=(sock, a.words, got, errors, stalls))
        t.start()
        report, cycle = [], []

        def cycle_server():
            cycle.append(dump_and_restore(a.stasis, server, os.path.join(work, "img"),
                                          report=report))

        c = threading.Thread(target=cycle_server)
        for i in range(a.words):
            sock.sendall(f"word {i}\n".encode())
            time.sleep(0.005)
            if i == a.words // 3:
                # The peer keeps sending into the lock meanwhile.
                c.start()
        c.join(timeout=30)
        restored = cycle[0] if cycle else None
        t.join(timeout=30)
        # What the peer sent while the lock was up was kept and handed to
        # the restored socket, not left to its retransmissions.
        handed = re.search(r"network lock \S+ lifted: (\d+) packets", "".join(report))
        if not handed or int(handed.group(1)) == 0:
            raise SystemExit("FAIL: the restore handed no kept packet to the socket: " +
                             "".join(report))
        print(f"the restore handed {handed.group(1)} packets kept by the network lock")
        if errors:
            raise SystemExit("FAIL: " + "; ".join(errors))
        if got != list(range(a.words)):
            missing = sorted(set(range(a.words)) - set(got))[:10]
            raise SystemExit(f"FAIL: {len(got)} words echoed, out of order or missing (first missing {missing})")
        print(f"{a.words} words echoed once and in order; longest stall {stalls[0] * 1000:.0f} ms")
        print("1 passed, 0 failed")
        return 0
    finally:
        kill(server.pid if server else None, restored)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
