#!/usr/bin/python3
"""A python3 program holding at once the objects of a real session: an
eventfd with a counter, an epoll on it and on a socketpair with unread data,
a pty pair with unread input, an sqlite3 connection inside an open write
transaction, a deleted temporary file with contents, a FIFO with data, an
flock, and a unix listener with a connection waiting in its backlog, with
data its client sent on it (only accept() reaches that data: the dump reads
it at its point of no return). All must be intact after restore.
"""
# Cases (the format is in CMakeLists.txt):
# The objects of a real session, all at once, in one python3 process.
# stasis-case: program.py_objects ${PROGRAM}
# stasis-case: program.py_objects.cycles3 ${PROGRAM} --cycles 3
import fcntl
import os
import select
import signal
import socket
import sqlite3
import sys
import tempfile
import termios
import time

triggered = []
signal.signal(signal.SIGUSR2, lambda *a: triggered.append(1))
tmp = os.environ.get("TMPDIR", "/tmp")
fails = []


def check(cond, what):
    if not cond:
        fails.append(what)


efd = os.eventfd(5, os.EFD_NONBLOCK)
a, b = socket.socketpair()
a.sendall(b"unread-in-b")
ep = select.epoll()
ep.register(efd, select.EPOLLIN)
ep.register(b.fileno(), select.EPOLLIN)

master, slave = os.openpty()
attrs = termios.tcgetattr(slave)
attrs[3] &= ~(termios.ICANON | termios.ECHO)
termios.tcsetattr(slave, termios.TCSANOW, attrs)
os.write(master, b"typed")

db_path = os.path.join(tmp, "objects.sqlite")
db = sqlite3.connect(db_path, isolation_level=None)
db.execute("create table t (x)")
db.execute("begin immediate")
db.execute("insert into t values (42)")

tf = tempfile.TemporaryFile(dir=tmp)
tf.write(b"deleted-but-open" * 1000)
tf.seek(7)

fifo_path = os.path.join(tmp, "objects.fifo")
os.mkfifo(fifo_path)
fifo = os.open(fifo_path, os.O_RDWR | os.O_NONBLOCK)
os.write(fifo, b"fifo-data")

lock_path = os.path.join(tmp, "objects.lock")
lockf = open(lock_path, "w")
fcntl.flock(lockf, fcntl.LOCK_EX)

sock_path = os.path.join(tmp, "objects.sock")
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sock_path)
listener.listen(4)
waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
waiting.connect(sock_path)
waiting.sendall(b"sent-while-waiting" * 100)

print("READY", flush=True)
while not triggered:
    time.sleep(0.05)

events = dict(ep.poll(1))
check(events.get(efd, 0) & select.EPOLLIN, "epoll: eventfd not ready")
check(events.get(b.fileno(), 0) & select.EPOLLIN, "epoll: socketpair not ready")
check(os.eventfd_read(efd) == 5, "eventfd counter")
check(b.recv(100) == b"unread-in-b", "socketpair data")
check(os.read(slave, 100) == b"typed", "pty input")
db.execute("commit")
other = sqlite3.connect(db_path)
check(other.execute("select x from t").fetchall() == [(42,)], "sqlite transaction")
check(tf.tell() == 7, "temp file offset")
tf.seek(0)
check(tf.read() == b"deleted-but-open" * 1000, "temp file contents")
check(os.read(fifo, 100) == b"fifo-data", "fifo data")
probe = open(lock_path, "w")
try:
    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fails.append("flock no longer held")
except BlockingIOError:
    pass
conn, _ = listener.accept()
conn.settimeout(5)
early = b""
while len(early) < 1800:
    part = conn.recv(4096)
    if not part:
        break
    early += part
check(early == b"sent-while-waiting" * 100, "data sent on the backlog connection before the dump")
waiting.sendall(b"hi")
check(conn.recv(10) == b"hi", "backlog connection")
conn.sendall(b"back")
waiting.settimeout(5)
check(waiting.recv(10) == b"back", "backlog connection, server to client")
print("FAIL: " + "; ".join(fails) if fails else "PASS", flush=True)
sys.exit(1 if fails else 0)
