#!/usr/bin/python3
"""A real syslog() caller (python3's syslog module, glibc underneath), dumped
with --external-unix=close.

glibc keeps a datagram socket connected to /dev/log. A helper outside the
tree is the log server: it binds /dev/log when nothing is there (and removes
it again at the end), and appends what it receives to $TMPDIR/syslog.txt.
After restore the process's socket is connected to a peer that is gone: the
next syslog() gets ECONNREFUSED, glibc reconnects to /dev/log and sends
again, and the message must reach the server.

Where a real syslog daemon already holds /dev/log, its messages cannot be
read back here: the program then only checks that syslog() still works and
that the socket it holds is connected to /dev/log again.
"""
# Cases (the format is in CMakeLists.txt):
# stasis-selftest: selftest.py_syslog SERIAL ${PROGRAM}
# stasis-case: program.py_syslog SERIAL ${PROGRAM} --dump-arg=--external-unix=close
# stasis-case: program.py_syslog.refused SERIAL ${PROGRAM} --expect-dump-failure [=[(?is)^(?=.*\b{pid}\b)(?=.*/dev/log)(?=.*--external-unix=close)]=]
import os
import signal
import socket
import stat
import sys
import syslog
import time

DEV_LOG = "/dev/log"
tmp = os.environ.get("TMPDIR", ".")
received = os.path.join(tmp, "syslog.txt")
ready_flag = os.path.join(tmp, "log-server-ready")
done_flag = os.path.join(tmp, "done")
triggered = [False]
signal.signal(signal.SIGUSR2, lambda *a: triggered.__setitem__(0, True))


def log_server():
    """Runs in the helper, outside the tree: until `done` (or a minute)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        srv.bind(DEV_LOG)
    except OSError:
        os._exit(2)  # taken meanwhile: the program sees a live /dev/log
    os.chmod(DEV_LOG, 0o666)
    mine = os.stat(DEV_LOG).st_ino
    with open(ready_flag, "w"):
        pass
    srv.settimeout(0.02)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not os.path.exists(done_flag):
        try:
            data = srv.recv(4096)
        except socket.timeout:
            continue
        with open(received, "ab") as f:
            f.write(data + b"\n")
    try:
        if os.stat(DEV_LOG).st_ino == mine:
            os.unlink(DEV_LOG)
    except OSError:
        pass
    os._exit(0)


def dev_log_live():
    try:
        if not stat.S_ISSOCK(os.stat(DEV_LOG).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(DEV_LOG)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def start_server():
    """Double fork: the server is no descendant of the dumped process."""
    if os.path.lexists(DEV_LOG) and not dev_log_live():
        os.unlink(DEV_LOG)  # a stale socket file left by a dead server
    if dev_log_live():
        return False
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            os.closerange(3, 1024)
            log_server()
        os._exit(0)
    os.waitpid(pid, 0)
    for _ in range(500):
        if os.path.exists(ready_flag):
            return True
        time.sleep(0.01)
    sys.exit("FAIL: the log server did not start")


def arrived(text, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(received, "rb") as f:
                if text.encode() in f.read():
                    return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def log_socket():
    """The socket glibc holds for syslog: its fd and peer name."""
    for name in os.listdir("/proc/self/fd"):
        try:
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if s.family == socket.AF_UNIX and s.type == socket.SOCK_DGRAM:
                try:
                    return int(name), s.getpeername()
                except OSError:
                    return int(name), None
        finally:
            s.close()
    return None, None


def main():
    ours = start_server()
    syslog.openlog("stasis-py-syslog", syslog.LOG_NDELAY, syslog.LOG_USER)
    syslog.syslog(syslog.LOG_INFO, "before-dump")
    if ours and not arrived("before-dump"):
        sys.exit("FAIL: the log server did not get the first message")
    fd, peer = log_socket()
    if peer != DEV_LOG:
        sys.exit(f"FAIL: no datagram socket connected to /dev/log (fd {fd}, peer {peer!r})")
    print("READY", flush=True)
    while not triggered[0]:
        time.sleep(0.01)

    failures = []
    syslog.syslog(syslog.LOG_INFO, "after-restore")
    if ours and not arrived("after-restore"):
        failures.append("the message after the restore did not reach /dev/log (glibc did not reconnect?)")
    fd, peer = log_socket()
    if peer != DEV_LOG:
        failures.append(f"the syslog socket is not connected to /dev/log after the message (peer {peer!r})")
    syslog.syslog(syslog.LOG_INFO, "and-again")
    if ours and not arrived("and-again"):
        failures.append("the second message did not arrive")
    with open(done_flag, "w"):
        pass
    print(f"FAIL: {failures[0]}" if failures else "PASS", flush=True)
    sys.exit(1 if failures else 0)


main()
