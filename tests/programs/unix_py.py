#!/usr/bin/python3
"""The unix sockets of a Jupyter session, from the standard library:

* asyncio's self-pipe: an unnamed non-blocking stream socketpair inside the
  process, with the wake-up byte of call_soon_threadsafe() still unread;
* multiprocessing.connection over a path-bound stream listener (what the
  ZMQ ipc transport and the forkserver do): a child connected and accepted,
  a message queued each way.

After restore the event loop runs the pending callback, the child and the
parent read each other's queued message and talk again, and the names of
the listener, the accepted socket and the child's peer are the same.
"""
# Cases (the format is in CMakeLists.txt):
# stasis-case: program.unix_py ${PROGRAM}
# stasis-case: program.unix_py.cycles3 ${PROGRAM} --cycles 3
# stasis-selftest: selftest.unix_py ${PROGRAM}
import asyncio
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import Client, Listener

triggered = [False]
signal.signal(signal.SIGUSR2, lambda *a: triggered.__setitem__(0, True))
path = os.path.join(os.environ.get("TMPDIR", "."), "ipc-1")


def sockname(conn, peer=False):
    s = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        return s.getpeername() if peer else s.getsockname()
    finally:
        s.close()


def child(go_r):
    conn = Client(path, family="AF_UNIX")
    conn.send({"from": "child", "n": 1})
    os.read(go_r, 1)  # parked here across the dump
    failures = []
    if conn.recv() != {"from": "parent", "n": 2}:
        failures.append("queued message")
    if sockname(conn, peer=True) != path:
        failures.append("peer name")
    conn.send("again")
    if conn.recv() != "bye":
        failures.append("reply")
    os._exit(1 if failures else 0)


def main():
    loop = asyncio.new_event_loop()
    ran = []
    loop.call_soon_threadsafe(ran.append, "callback")  # one byte into the self-pipe
    listener = Listener(path, family="AF_UNIX")
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        child(go_r)
    conn = listener.accept()
    conn.send({"from": "parent", "n": 2})
    while not conn.poll(5):
        pass  # the child's message is queued before the dump
    print("READY", flush=True)
    while not triggered[0]:
        time.sleep(0.01)

    failures = []
    loop.run_until_complete(asyncio.sleep(0.01))
    if ran != ["callback"]:
        failures.append(f"pending asyncio callback: {ran}")
    if conn.recv() != {"from": "child", "n": 1}:
        failures.append("child's queued message")
    if sockname(conn) != path or listener.address != path:
        failures.append("accepted socket's name")
    if os.stat(path).st_ino == 0:
        failures.append("socket file")
    os.write(go_w, b"g")
    if conn.recv() != "again":
        failures.append("child's message after restore")
    conn.send("bye")
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failures.append(f"child status {status:#x}")
    listener.close()
    loop.close()
    print("FAIL: " + "; ".join(failures) if failures else "PASS", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
