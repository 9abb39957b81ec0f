"""Shared by the TCP system tests and bench/tcp_resume.py: an echo server to
checkpoint, started in its own session, a reader for the "word N" stream a
client sends through it, and the dump-then-restore step.

Test programs run with `python3 -c` (in the checkpointed tree, or in a test's
network namespace) import it after putting this directory, given to them as
an argument, on sys.path.
"""
import os
import signal
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# Echoes one connection on 127.0.0.1 until the peer closes; prints its port.
ECHO_SERVER = r"""
import socket
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


def start_server(code, log_path, *args, fail="FAIL: server did not start"):
    """Runs `python3 -c code *args` in a session of its own (so it can be
    dumped as a tree), its output in log_path, and waits for the port it
    prints first. Returns (process, port)."""
    log = open(log_path, "w+")
    p = subprocess.Popen(["/usr/bin/python3", "-c", code, *args], stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    deadline = time.time() + 10
    while not open(log_path).read().strip():
        if time.time() > deadline:
            p.kill()
            p.wait()
            raise SystemExit(fail)
        time.sleep(0.02)
    return p, int(open(log_path).read().split()[0])


def read_words(sock, words, got, errors, stall):
    """Reads the echoed "word N" lines from sock, appending each N to got,
    until `words` came back; stall[0] gets the longest wait between two
    reads, errors what ended the stream early."""
    buf, last = b"", time.monotonic()
    try:
        while len(got) < words:
            d = sock.recv(65536)
            if not d:
                errors.append("connection closed by the server")
                return
            now = time.monotonic()
            stall[0] = max(stall[0], now - last)
            last = now
            buf += d
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                got.append(int(line.split()[1]))
    except OSError as e:
        errors.append(f"{type(e).__name__}: {e}")


def to_eof(s):
    """Everything s receives until EOF."""
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            return out
        out += d


def dump_and_restore(stasis, server, img, pause=0.3, report=None):
    """Dumps the tree of server (a Popen) to img, waits pause seconds (the
    peer's packets hit the network lock meanwhile), restores it; returns the
    restored pid. Fails the test on any error. The restore's stderr is
    appended to report (a list), if given."""
    d = subprocess.run([stasis, "dump", "-t", str(server.pid), "-D", img], capture_output=True, text=True)
    server.wait()
    if d.returncode != 0:
        raise SystemExit("FAIL: dump: " + d.stderr)
    time.sleep(pause)
    r = subprocess.run([stasis, "restore", "-D", img], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("FAIL: restore: " + r.stderr)
    if report is not None:
        report.append(r.stderr)
    return int(r.stdout.split()[-1])


def kill(*pids):
    """SIGKILL to each pid that is set, ignoring those already gone."""
    for pid in pids:
        try:
            if pid:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
