#!/usr/bin/env python3
"""Half-closed connections whose peer is OUTSIDE the checkpointed tree (the
network lock holds them), IPv4 and IPv6, across a dump and a restore:

  A: the client sent bytes and shut its write side; the server has not read
     them (CLOSE_WAIT, bytes then the FIN unread);
  B: the server sent bytes and shut its write side (FIN_WAIT2); the client
     has not read them.

After the restore the server reads A to its EOF, reads B's new bytes to
their EOF, and answers on A. The client must get B's bytes then EOF, A's
answer then EOF, and never a reset.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from tcp_lib import HERE, dump_and_restore, kill, start_server, to_eof

SERVER = r"""
import os, socket, sys, time
sys.path.insert(0, sys.argv[3])
from tcp_lib import to_eof
family = socket.AF_INET6 if sys.argv[2] == "6" else socket.AF_INET
l = socket.socket(family)
l.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
l.listen(4)
print(l.getsockname()[1], flush=True)
a, _ = l.accept()
b, _ = l.accept()
b.sendall(b"from-server")
b.shutdown(socket.SHUT_WR)
l.close()
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.01)
got_a = to_eof(a)
got_b = to_eof(b)
a.sendall(b"A=" + got_a + b" B=" + got_b)
a.close()
b.close()
"""


def state_of(port, local):
    """TCP state names of the server's sockets on port (ss -tan)."""
    out = subprocess.run(["ss", "-tanH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def run(stasis, family, work):
    go = os.path.join(work, f"go{family}")
    server = None
    restored = None
    try:
        server, port = start_server(SERVER, os.path.join(work, f"server{family}.log"), go, family, HERE)
        host = "::1" if family == "6" else "127.0.0.1"
        a = socket.create_connection((host, port))
        b = socket.create_connection((host, port))
        a.sendall(b"client-data")
        a.shutdown(socket.SHUT_WR)
        deadline = time.time() + 5
        while state_of(port, host) != ["CLOSE-WAIT", "FIN-WAIT-2"]:
            if time.time() > deadline:
                raise SystemExit(f"FAIL: server sockets are {state_of(port, host)}")
            time.sleep(0.02)
        # The client's packets hit the lock between the two.
        restored = dump_and_restore(stasis, server, os.path.join(work, f"img{family}"))
        open(go, "w").close()
        a.settimeout(10)
        b.settimeout(10)
        got_b = to_eof(b)
        if got_b != b"from-server":
            raise SystemExit(f"FAIL: IPv{family} B: client read {got_b!r} before EOF")
        b.sendall(b"more")
        b.shutdown(socket.SHUT_WR)
        got_a = to_eof(a)
        if got_a != b"A=client-data B=more":
            raise SystemExit(f"FAIL: IPv{family} A: client read {got_a!r} before EOF")
        print(f"IPv{family}: CLOSE_WAIT and FIN_WAIT2 with an outside peer: bytes and EOFs intact, no reset")
    except OSError as e:
        raise SystemExit(f"FAIL: IPv{family}: {type(e).__name__}: {e}")
    finally:
        kill(server.pid if server else None, restored)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", required=True)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="stasis-tcp-half-")
    try:
        run(a.stasis, "4", work)
        run(a.stasis, "6", work)
        print("2 passed, 0 failed")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
