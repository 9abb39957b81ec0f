#!/usr/bin/python3
"""Runs one end-to-end case: start a test program, dump it with stasis,
restore it (N times), trigger it and expect it to print PASS.

    run_case.py --stasis BUILD/stasis --program PATH [ARGS...]
                [--interpreter /usr/bin/python3] [--cycles N]
                [--leave-running [--restore-left-running]]
                [--trigger sigusr2|none] [--expect-syscall NR[,NR...]]
                [--expect-dump-failure REGEX] [--xfail-dump-refusal REGEX]
                [--corrupt flip-page|truncate] [--change-file-size RELPATH]
                [--inspect] [--no-dump] [--timeout 60]
                [--dump-arg ARG]... [--restore-arg ARG]... [--on-terminal]
                [--stream pipe|socket]

The program runs in a fresh temp dir (its cwd and $TMPDIR) with stdin from
/dev/null and stdout+stderr appended to temp/log. In REGEX, "{pid}" stands
for the pid given to `stasis dump`. --xfail-dump-refusal: if the dump fails
with stderr matching REGEX (a known unsupported feature), check the original
was left untouched and exit 77 (ctest SKIP_RETURN_CODE). --no-dump runs the
program alone (start, READY, trigger, PASS): a check of the program itself.

--stream sends the image through a pipe (or a unix socket pair) instead of a
directory: `stasis dump -o - --progress` with its stdout on one end, `stasis
restore -i - --progress` with its stdin on the other, run together; both
must report their phases. With --expect-dump-failure the restore must refuse
the incomplete stream and leave nothing, and the original must still run.

Exit status: 0 pass, 1 fail, 77 expected dump refusal.
"""
import argparse
import ctypes
import fcntl
import select
import termios
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

READY_TIMEOUT = 20.0
SYSCALL_TIMEOUT = 10.0
GONE_TIMEOUT = 10.0
PAGE_RECORD = 4
STREAM_HEADER = 24
FRAME_HEADER = struct.Struct("<HHIQ")  # type, flags, payload_length, checksum


# --on-terminal: a shell stand-in, leader of a session whose controlling
# terminal is its stdin (a pty whose master the runner holds). It runs
# argv[3:] as a foreground job (its own group), with stdout and stderr to
# argv[1] and argv[2] when given, writes the job's pid to argv[0]'s file
# and its exit code to .rc beside it, then, as a shell does, takes its
# terminal back.
SHELL_STUB = r"""
import fcntl, os, signal, sys, termios, time
pidfile, out, err = sys.argv[1:4]
cmd = sys.argv[4:]
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.tcsetpgrp(0, os.getpid())
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    for path, fd in ((out, 1), (err, 2)):
        if path != "-":
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    os.execv(cmd[0], cmd)
try:
    os.setpgid(pid, pid)
except OSError:
    pass
with open(pidfile + ".tmp", "w") as f:
    f.write(str(pid))
os.rename(pidfile + ".tmp", pidfile)
_, status = os.waitpid(pid, 0)
with open(pidfile + ".rc.tmp", "w") as f:
    f.write(str(os.waitstatus_to_exitcode(status)))
os.rename(pidfile + ".rc.tmp", pidfile + ".rc")
os.tcsetpgrp(0, os.getpgrp())
"""


class CaseFailure(Exception):
    pass


class ExpectedRefusal(Exception):
    pass


def log(msg):
    print(msg, flush=True)


# --- /proc ---------------------------------------------------------------------

def read_proc(pid, name):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


def proc_state(pid):
    """State letter from /proc/PID/stat, or None if there is no such process."""
    stat = read_proc(pid, "stat")
    if not stat:
        return None
    return stat[stat.rindex(b")") + 2:].split()[0].decode()


def proc_ppid(pid):
    stat = read_proc(pid, "stat")
    if not stat:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def tracer_pid(pid):
    status = read_proc(pid, "status") or b""
    m = re.search(rb"^TracerPid:\s*(\d+)", status, re.M)
    return int(m.group(1)) if m else None


def describe(pid):
    cmd = (read_proc(pid, "cmdline") or b"").replace(b"\0", b" ").decode(errors="replace").strip()
    return f"pid {pid} [{proc_state(pid)}] {cmd}"


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def descends_from(pid, ancestor):
    for _ in range(64):
        if pid == ancestor:
            return True
        if pid is None or pid <= 1:
            return False
        pid = proc_ppid(pid)
    return False


def wait_status_text(status):
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig} ({signal.Signals(sig).name})"
    return f"wait status {status:#x}"


def set_child_subreaper():
    """Orphans of our descendants (restored processes, once `stasis restore`
    returns) get reparented to us: we can reap them, read their exit status
    and find leftovers."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except OSError:
        pass


# --- the case ---------------------------------------------------------------------

class Case:
    def __init__(self, args):
        self.args = args
        self.program = os.path.realpath(args.program[0])
        self.tmp = os.path.realpath(tempfile.mkdtemp(prefix="stasis-case-", dir="/tmp"))
        self.logpath = os.path.join(self.tmp, "log")
        self.proc = None            # the original, our child
        self.exit_status = {}       # pid -> wait status, for processes we reaped
        self.timings = []
        self.ncmd = 0               # stasis commands run, to name their output files

    # -- processes --

    def start(self):
        argv = [self.program] + self.args.program[1:]
        if self.args.interpreter:
            argv = [self.args.interpreter] + argv
        env = dict(os.environ, TMPDIR=self.tmp, STASIS_CASE=self.tmp)
        creds = {}
        if self.args.user:
            # The program runs as that user, as JupyterHub runs a user's server.
            import pwd
            pw = pwd.getpwnam(self.args.user)
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
            creds = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
            env["HOME"] = self.tmp
        if self.args.on_terminal:
            self.start_on_terminal(argv, env)
            return
        with open(self.logpath, "ab") as logf:
            self.proc = subprocess.Popen(argv, cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                         **creds)
        log(f"started {' '.join(argv)} as pid {self.proc.pid} in {self.tmp}")

    # -- a job on a terminal (--on-terminal) --

    def new_terminal(self, rows, cols):
        """A pty: the runner keeps the master (outside any dumped tree)."""
        master, slave = os.openpty()
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.term_master, self.term_name, self.term_size = master, os.ttyname(slave), (rows, cols)
        return slave

    def run_as_job(self, argv, slave, out, err, env=None, logf=None):
        """Runs argv as the foreground job of a shell stand-in on `slave`;
        returns (stand-in Popen, path of the job's pid file)."""
        pidfile = os.path.join(self.tmp, f"job{self.ncmd}.pid")
        stub = [sys.executable, "-c", SHELL_STUB, pidfile, out, err] + argv
        p = subprocess.Popen(stub, cwd=self.tmp, stdin=slave, stdout=logf or subprocess.DEVNULL,
                             stderr=subprocess.STDOUT if logf else subprocess.DEVNULL, env=env,
                             start_new_session=True)
        os.close(slave)
        return p, pidfile

    def wait_file(self, path, what, timeout=20.0):
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise CaseFailure(f"{what}: {path} did not appear within {timeout:.0f} s")
            time.sleep(0.01)
        with open(path) as f:
            return f.read().strip()

    def start_on_terminal(self, argv, env):
        slave = self.new_terminal(24, 80)
        self.ncmd += 1
        with open(self.logpath, "ab") as logf:
            self.proc, pidfile = self.run_as_job(argv, slave, "-", "-", env=env, logf=logf)
        self.job_pid = int(self.wait_file(pidfile, "the job's pid"))
        log(f"started {' '.join(argv)} as pid {self.job_pid}, a job of session {self.proc.pid} on "
            f"{self.term_name}")

    def talk_to_job(self, pid):
        """After the trigger: the job writes "JOB-OUT tty=NAME rows=R cols=C"
        through /dev/tty; it must be on the terminal the runner holds now,
        with that terminal's size, and then read the line we type."""
        got, deadline = b"", time.monotonic() + 10
        while b"\n" not in got.partition(b"JOB-OUT")[2]:
            if time.monotonic() > deadline:
                raise CaseFailure(f"no JOB-OUT line from the job on {self.term_name} (got {got!r})")
            r, _, _ = select.select([self.term_master], [], [], 0.1)
            if r:
                got += os.read(self.term_master, 4096)
        line = (b"JOB-OUT" + got.partition(b"JOB-OUT")[2].partition(b"\n")[0]).decode().strip()
        want = f"JOB-OUT tty={self.term_name} rows={self.term_size[0]} cols={self.term_size[1]}"
        if line != want:
            raise CaseFailure(f"the job says {line!r}, expected {want!r}")
        log(f"job on its terminal: {line}")
        stat = read_proc(pid, "stat") or b""
        fields = stat[stat.rindex(b")") + 2:].split() if stat else []
        pgrp, tpgid = (int(fields[2]), int(fields[5])) if len(fields) > 5 else (None, None)
        if pgrp != tpgid:
            raise CaseFailure(f"pid {pid}: group {pgrp} is not the terminal's foreground group {tpgid}")
        if getattr(self, "restorer", None) is not None and pgrp != self.restorer:
            raise CaseFailure(f"pid {pid}: group {pgrp}, not the group of the restore job "
                              f"(stasis restore, pid {self.restorer}) that the shell knows")
        os.write(self.term_master, b"typed-after\n")

    def log_text(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if "READY\n" in self.log_text():
                return
            if self.proc.poll() is not None:
                raise CaseFailure(f"program exited before READY ({wait_status_text_rc(self.proc.returncode)})")
            time.sleep(0.02)
        raise CaseFailure(f"no READY within {READY_TIMEOUT:.0f} s")

    def wait_syscall(self, pid):
        if not self.args.expect_syscall:
            return
        want = {s.strip() for s in self.args.expect_syscall.split(",")}
        deadline = time.monotonic() + SYSCALL_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            raw = read_proc(pid, "syscall")
            if raw is None:
                raise CaseFailure(f"pid {pid} vanished while waiting for it to block in syscall {sorted(want)}")
            last = raw.decode().split()[0] if raw.split() else ""
            if last in want:
                return
            time.sleep(0.02)
        raise CaseFailure(f"pid {pid} not blocked in syscall {'/'.join(sorted(want))} within "
                          f"{SYSCALL_TIMEOUT:.0f} s (last /proc/{pid}/syscall: {last})")

    def reap(self, pid):
        """Reaps pid if it is our (possibly adopted) child and has exited."""
        if self.proc is not None and pid == self.proc.pid:
            if self.proc.poll() is not None:
                self.exit_status[pid] = status_from_rc(self.proc.returncode)
            return
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got == pid:
                self.exit_status[pid] = status
        except ChildProcessError:
            pass

    def reap_adopted(self):
        """Reaps whatever children we have (once the original is reaped, they
        are the processes the subreaper adopted: restored processes, restore
        helpers) and describes their ends, to tell how a restored process died."""
        if self.proc is not None:
            return ""  # waitpid(-1) could take the original's status from Popen
        ends = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | 0x40000000)  # __WALL
            except ChildProcessError:
                break
            if pid == 0:
                break
            self.exit_status[pid] = status
            ends.append(f"pid {pid}: {wait_status_text(status)}")
        return "; ".join(ends)

    def gone(self, pid):
        self.reap(pid)
        return proc_state(pid) in (None, "Z", "X")

    def wait_gone(self, pid, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.gone(pid):
                return
            time.sleep(0.02)
        raise CaseFailure(f"{what}: pid {pid} still there after {timeout:.0f} s: {describe(pid)}")

    def check_untouched(self, pid):
        """After a failed or --leave-running dump: alive, not stopped, and
        traced by nobody but whoever traced it before (refuse_traced)."""
        deadline = time.monotonic() + 2.0
        while True:
            state, tracer = proc_state(pid), tracer_pid(pid)
            if state in (None, "Z", "X"):
                raise CaseFailure(f"pid {pid} is dead after the dump (state {state})")
            if state not in ("T", "t") and tracer == getattr(self, "tracer_before", 0):
                return
            if time.monotonic() > deadline:
                raise CaseFailure(f"pid {pid} left stopped or traced after the dump (state {state}, "
                                  f"TracerPid {tracer})")
            time.sleep(0.05)

    def case_processes(self):
        """Processes belonging to this case, the runner and its stasis commands
        aside: our descendants, the program with our marker in its environment,
        anything naming our temp dir."""
        me = os.getpid()
        found = []
        marker = f"STASIS_CASE={self.tmp}".encode()
        for pid in all_pids():
            if pid == me:
                continue
            if self.proc is not None and pid == self.proc.pid and self.proc.poll() is not None:
                continue
            state = proc_state(pid)
            if state in (None, "Z", "X"):
                self.reap(pid)
                continue
            argv = (read_proc(pid, "cmdline") or b"").split(b"\0")
            env = read_proc(pid, "environ") or b""
            mine = descends_from(pid, me)
            mine = mine or (self.program.encode() in argv and marker in env.split(b"\0"))
            mine = mine or any(self.tmp.encode() in a for a in argv)
            if mine:
                found.append(pid)
        return found

    def check_no_leftovers(self, what, grace=3.0, keep=()):
        deadline = time.monotonic() + grace
        while True:
            left = [p for p in self.case_processes() if p not in keep]
            if not left:
                return
            if time.monotonic() > deadline:
                desc = "; ".join(describe(p) for p in left)
                self.kill_all()
                raise CaseFailure(f"{what}: processes left running: {desc}")
            time.sleep(0.05)

    def kill_all(self):
        for pid in self.case_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        time.sleep(0.1)
        for pid in self.case_processes():
            self.reap(pid)

    # -- stasis --

    def stasis(self, *argv, timeout=None):
        """Runs a stasis command; returns (exit code, stdout, stderr, seconds).
        Output goes to files, not pipes: a helper the engine leaves behind
        holding them must not make us wait."""
        cmd = [self.args.stasis] + list(argv)
        self.ncmd += 1
        out_path = os.path.join(self.tmp, f"stasis{self.ncmd}.{argv[0]}.out")
        err_path = os.path.join(self.tmp, f"stasis{self.ncmd}.{argv[0]}.err")
        t0 = time.monotonic()
        with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f)
        try:
            rc = p.wait(timeout=timeout or self.args.timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = None
        elapsed = time.monotonic() - t0
        with open(out_path, "rb") as f:
            out = f.read().decode(errors="replace")
        with open(err_path, "rb") as f:
            err = f.read().decode(errors="replace")
        if rc is None:
            raise CaseFailure(f"`{' '.join(cmd)}` did not finish within {timeout or self.args.timeout:.0f} s "
                              f"(killed it); stderr:\n{err}")
        log(f"$ {' '.join(cmd)}  -> exit {rc} in {elapsed:.3f} s")
        if err.strip():
            log("  stderr: " + err.strip()[-3000:].replace("\n", "\n  stderr: "))
        return rc, out, err, elapsed

    def stasis_on_terminal(self, *argv):
        """A stasis command run as a job on a new terminal; as stasis()."""
        slave = self.new_terminal(33, 101)
        self.ncmd += 1
        out_path = os.path.join(self.tmp, f"stasis{self.ncmd}.{argv[0]}.out")
        err_path = os.path.join(self.tmp, f"stasis{self.ncmd}.{argv[0]}.err")
        t0 = time.monotonic()
        self.stubs = getattr(self, "stubs", [])
        stub, pidfile = self.run_as_job([self.args.stasis] + list(argv), slave, out_path, err_path)
        self.stubs.append(stub)
        self.restorer = int(self.wait_file(pidfile, "stasis on a terminal"))
        self.restorer_rc = pidfile + ".rc"
        # restore --shell-job stays, as the job, until the tree ends: done
        # when it printed the pid, or ended.
        deadline = time.monotonic() + self.args.timeout
        rc = 0
        while True:
            if os.path.exists(pidfile + ".rc"):
                rc = int(self.wait_file(pidfile + ".rc", "stasis on a terminal"))
                break
            try:
                with open(out_path, "rb") as f:
                    lines = f.read().strip().splitlines()
            except FileNotFoundError:  # the job has not opened it yet
                lines = []
            if lines and lines[-1].strip().isdigit():
                time.sleep(0.2)
                if "--shell-job" in argv and os.path.exists(pidfile + ".rc"):
                    raise CaseFailure("stasis restore --shell-job ended before its job did")
                break
            if time.monotonic() > deadline:
                raise CaseFailure(f"`stasis {' '.join(argv)}` on a terminal: no pid and no end "
                                  f"within {self.args.timeout:.0f} s")
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
        with open(out_path, "rb") as f:
            out = f.read().decode(errors="replace")
        with open(err_path, "rb") as f:
            err = f.read().decode(errors="replace")
        log(f"$ {self.args.stasis} {' '.join(argv)}  (a job on {self.term_name}) -> exit {rc} in "
            f"{elapsed:.3f} s")
        if err.strip():
            log("  stderr: " + err.strip()[-3000:].replace("\n", "\n  stderr: "))
        return rc, out, err, elapsed

    def restore(self, img):
        run = self.stasis_on_terminal if self.args.on_terminal else self.stasis
        rc, out, err, elapsed = run("restore", "-D", img, *self.args.restore_arg)
        if rc != 0:
            raise CaseFailure(f"restore failed (exit {rc}):\n{err.strip()}")
        lines = out.strip().splitlines()
        if not lines or not lines[-1].strip().isdigit():
            raise CaseFailure(f"restore did not print the host pid on its last stdout line; stdout: {out!r}")
        pid = int(lines[-1].strip())
        if proc_state(pid) is None:
            time.sleep(0.2)
            ends = self.reap_adopted()
            raise CaseFailure(f"restore printed host pid {pid}, but it is already gone (no /proc/{pid}): "
                              f"the restored process died right after the restore"
                              + (f"; adopted processes that ended (e.g. its PID-namespace init, whose exit "
                                 f"status is 128+signal if it was killed): {ends}" if ends else ""))
        return pid, elapsed

    def expect_failed_restore(self, img, words, what):
        """A restore that must fail, mention `words` and leave nothing behind."""
        # A shorter limit: an intact restore may follow within ctest's TIMEOUT.
        rc, out, err, _ = self.stasis("restore", "-D", img, timeout=min(self.args.timeout, 30.0))
        if rc == 0:
            lines = out.strip().splitlines()
            if lines and lines[-1].strip().isdigit():
                try:
                    os.kill(int(lines[-1].strip()), signal.SIGKILL)
                except OSError:
                    pass
            raise CaseFailure(f"{what}: restore succeeded, expected a failure")
        for w in words:
            if w.lower() not in err.lower():
                raise CaseFailure(f"{what}: restore failed (exit {rc}) but its stderr does not mention "
                                  f"{w!r}:\n{err.strip()}")
        self.check_no_leftovers(f"{what}: after the failed restore")
        log(f"{what}: restore refused as expected")

    # -- image manipulation --

    def corrupt(self, imgfile, mode):
        with open(imgfile, "rb") as f:
            data = bytearray(f.read())
        if mode == "truncate":
            with open(imgfile, "wb") as f:
                f.write(data[: len(data) // 2])
            log(f"truncated {imgfile} from {len(data)} to {len(data) // 2} bytes")
            return
        if data[:8] != b"STASISIM":
            raise CaseFailure(f"{imgfile} does not start with the STASISIM magic: {bytes(data[:8])!r}")
        pos = STREAM_HEADER
        while pos + FRAME_HEADER.size <= len(data):
            rtype, _flags, plen, _sum = FRAME_HEADER.unpack_from(data, pos)
            payload = pos + FRAME_HEADER.size
            if payload + plen > len(data):
                raise CaseFailure(f"record at offset {pos} (type {rtype}) runs past the end of the image")
            if rtype == PAGE_RECORD and plen > 16:
                # In the page data (after addr, pid, npages), or mid-payload
                # if the payload is shorter (e.g. compressed).
                target = payload + (16 + 100 if plen > 16 + 100 else plen // 2)
                data[target] ^= 0x5A
                with open(imgfile, "wb") as f:
                    f.write(data)
                log(f"flipped the byte at offset {target} (page record at {pos}, payload {plen} bytes)")
                return
            pos = payload + plen
        raise CaseFailure(f"no page record (type {PAGE_RECORD}) found in {imgfile}")

    # -- the steps --

    def trigger(self, pid):
        if self.args.trigger == "sigusr2":
            os.kill(pid, signal.SIGUSR2)

    def finish(self, pid):
        """Trigger, wait for the end, judge the log."""
        self.trigger(pid)
        if self.args.on_terminal:
            self.talk_to_job(pid)
        if self.proc is not None and pid == self.proc.pid:
            try:
                self.proc.wait(timeout=self.args.timeout)
            except subprocess.TimeoutExpired:
                raise CaseFailure(f"program did not finish within {self.args.timeout} s after the trigger")
            self.exit_status[pid] = status_from_rc(self.proc.returncode)
        else:
            self.wait_gone(pid, self.args.timeout, "after the trigger")
        if getattr(self, "restorer", None) is not None:
            rc = self.wait_file(self.restorer_rc, "the restore job's end")
            if rc != "0":
                raise CaseFailure(f"stasis restore --shell-job ended with {rc}, not the job's 0")
        text = self.log_text()
        lines = text.splitlines()
        status = self.exit_status.get(pid)
        how = f" ({wait_status_text(status)})" if status is not None else ""
        if status is None and self.proc is None:
            time.sleep(0.1)
            ends = self.reap_adopted()
            how = f" (adopted processes that ended: {ends})" if ends else ""
        fails = [l for l in lines if l.startswith("FAIL")]
        if fails:
            raise CaseFailure(f"program reported {fails[0]}{how}")
        if "PASS" not in lines:
            raise CaseFailure(f"program ended without PASS{how}")
        if lines.count("READY") != 1:
            raise CaseFailure(f"READY printed {lines.count('READY')} times")
        if status is not None and status != 0:
            raise CaseFailure(f"program printed PASS but ended with {wait_status_text(status)}")

    def stream_image(self, dump_argv):
        """Runs `stasis dump ... -o -` and `stasis restore -i -` together, the
        dump's stdout feeding the restore's stdin through a pipe or a socket
        pair. Returns (dump rc, dump stderr, restore rc, restore stdout,
        restore stderr, seconds)."""
        a = self.args
        if a.stream == "pipe":
            read_end, write_end = os.pipe()
        else:
            left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            write_end, read_end = left.detach(), right.detach()
        self.ncmd += 1
        paths = {n: os.path.join(self.tmp, f"stasis{self.ncmd}.stream.{n}")
                 for n in ("dump.err", "restore.out", "restore.err")}
        dump_cmd = [a.stasis] + dump_argv
        restore_cmd = [a.stasis, "restore", "-i", "-", "--progress"] + a.restore_arg
        t0 = time.monotonic()
        procs = []
        try:
            with open(paths["dump.err"], "wb") as de, open(paths["restore.out"], "wb") as ro, \
                    open(paths["restore.err"], "wb") as re_:
                procs.append(subprocess.Popen(restore_cmd, stdin=read_end, stdout=ro, stderr=re_))
                procs.append(subprocess.Popen(dump_cmd, stdin=subprocess.DEVNULL, stdout=write_end,
                                              stderr=de))
        finally:
            # Ours closed, the restore sees the end of the stream when the dump ends.
            os.close(read_end)
            os.close(write_end)
        rcs = []
        for p in reversed(procs):
            try:
                rcs.append(p.wait(timeout=max(1.0, a.timeout - (time.monotonic() - t0))))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                    q.wait()
                raise CaseFailure(f"`{' '.join(dump_cmd)} | {' '.join(restore_cmd)}` did not finish "
                                  f"within {a.timeout:.0f} s (killed them)")
        elapsed = time.monotonic() - t0
        out = {}
        for n, path in paths.items():
            with open(path, "rb") as f:
                out[n] = f.read().decode(errors="replace")
        log(f"$ {' '.join(dump_cmd)} | (through a {a.stream}) {' '.join(restore_cmd)}  -> exit "
            f"{rcs[0]} | {rcs[1]} in {elapsed:.3f} s")
        for n in ("dump.err", "restore.err"):
            if out[n].strip():
                log(f"  {n}: " + out[n].strip()[-3000:].replace("\n", f"\n  {n}: "))
        return rcs[0], out["dump.err"], rcs[1], out["restore.out"], out["restore.err"], elapsed

    def check_progress(self, err, phases, who):
        said = set(re.findall(r"^stasis: progress: (\w+)", err, re.M))
        missing = [p for p in phases if p not in said]
        if missing:
            raise CaseFailure(f"{who} --progress did not report {missing} (reported {sorted(said)})")

    def stream_cycle(self, pid, dump_argv):
        """One dump and restore through a stream. Returns (restored pid,
        seconds), or None when the dump failed as expected."""
        a = self.args
        rc, dump_err, rrc, rout, rerr, elapsed = self.stream_image(dump_argv)
        if a.expect_dump_failure:
            regex = a.expect_dump_failure.replace("{pid}", str(pid))
            if rc != 0 and not re.search(regex, dump_err):
                raise CaseFailure(f"dump failed (exit {rc}) but stderr does not match /{regex}/:\n"
                                  f"{dump_err.strip()}")
            if rc != 0:
                if rrc == 0:
                    raise CaseFailure("the dump failed, but the restore of its stream succeeded")
                if "ended before its trailer" not in rerr and "truncated" not in rerr \
                        and "stream is empty" not in rerr:
                    raise CaseFailure(f"the restore refused the incomplete stream without saying it "
                                      f"is incomplete:\n{rerr.strip()}")
                self.check_no_leftovers("after the refused stream", keep=(pid,))
            self.dump_refused(pid, rc, dump_err, f"stderr matches /{regex}/")
            return None
        if rc != 0:
            raise CaseFailure(f"dump of pid {pid} to a {a.stream} failed (exit {rc}):\n{dump_err.strip()}")
        self.check_progress(dump_err, ["freeze", "collect", "write", "pages", "release"], "dump")
        self.wait_gone(pid, GONE_TIMEOUT, "after the dump")
        if self.proc is not None and pid == self.proc.pid:
            self.proc.wait()
            self.proc = None
        if rrc != 0:
            raise CaseFailure(f"restore from a {a.stream} failed (exit {rrc}):\n{rerr.strip()}")
        self.check_progress(rerr, ["read", "files", "tree", "release"], "restore")
        lines = rout.strip().splitlines()
        if not lines or not lines[-1].strip().isdigit():
            raise CaseFailure(f"restore did not print the host pid on its last stdout line; stdout: {rout!r}")
        return int(lines[-1].strip()), elapsed

    def check_restored(self, pid):
        if self.args.trigger == "none":
            return
        st, tracer = proc_state(pid), tracer_pid(pid)
        if st in ("Z", "X", None):
            self.reap(pid)
            status = self.exit_status.get(pid)
            how = wait_status_text(status) if status is not None else f"state {st}"
            raise CaseFailure(f"restored pid {pid} died before the trigger ({how})")
        if st in ("T", "t"):
            raise CaseFailure(f"restored pid {pid} is stopped (state {st}, TracerPid {tracer})")

    def dump_refused(self, pid, rc, err, why):
        """The dump failed as expected: the original must be intact and PASS."""
        if rc == 0:
            raise CaseFailure("dump succeeded, expected it to fail")
        log(f"dump refused as expected ({why})")
        self.check_untouched(pid)
        self.finish(pid)

    def run(self):
        a = self.args
        self.start()
        self.wait_ready()
        pid = self.job_pid if a.on_terminal else self.proc.pid
        if a.no_dump:
            self.wait_syscall(pid)
            self.finish(pid)
            return
        for cycle in range(a.cycles):
            self.wait_syscall(pid)
            self.tracer_before = tracer_pid(pid)
            if a.stream:
                argv = ["dump", "-t", str(pid), "-o", "-", "--progress"] + a.dump_arg
                moved = self.stream_cycle(pid, argv)
                if moved is None:
                    return
                pid, elapsed = moved
                self.timings.append((cycle, elapsed, elapsed, 0))
                log(f"cycle {cycle}: dump | restore through a {a.stream} {elapsed:.3f} s, restored as "
                    f"host pid {pid}")
                self.check_restored(pid)
                continue
            img = os.path.join(self.tmp, f"img{cycle}")
            os.mkdir(img)
            argv = ["dump", "-t", str(pid), "-D", img] + (["--leave-running"] if a.leave_running else [])
            argv += a.dump_arg
            rc, _out, err, t_dump = self.stasis(*argv)
            if a.expect_dump_failure:
                regex = a.expect_dump_failure.replace("{pid}", str(pid))
                if rc != 0 and not re.search(regex, err):
                    raise CaseFailure(f"dump failed (exit {rc}) but stderr does not match /{regex}/:\n{err.strip()}")
                self.dump_refused(pid, rc, err, f"stderr matches /{regex}/")
                return
            if rc != 0 and a.xfail_dump_refusal:
                regex = a.xfail_dump_refusal.replace("{pid}", str(pid))
                if re.search(regex, err):
                    self.dump_refused(pid, rc, err, f"known unsupported: /{regex}/")
                    raise ExpectedRefusal(f"dump refused (stderr matches /{regex}/); original left intact and PASSed")
            if rc != 0:
                raise CaseFailure(f"dump of pid {pid} failed (exit {rc}):\n{err.strip()}")
            imgfile = os.path.join(img, "stasis.img")
            if not os.path.isfile(imgfile):
                raise CaseFailure(f"dump exited 0 but wrote no {imgfile}")
            size = os.path.getsize(imgfile)

            if a.leave_running:
                self.check_untouched(pid)
                log(f"cycle {cycle}: dump {t_dump:.3f} s ({size} bytes), original left running")
                if not a.restore_left_running:
                    self.finish(pid)
                    return
                # The image is of a moment the original has moved on from:
                # it goes, and the image must restore to a consistent state.
                os.kill(pid, signal.SIGKILL)
            self.wait_gone(pid, GONE_TIMEOUT, "after the dump")
            if self.proc is not None and pid == self.proc.pid:
                self.proc.wait()
                self.proc = None  # reaped: its pid may now be reused

            # Every image the suite writes must decode and re-encode to the
            # same bytes (stasis inspect --verify).
            rc, out, err, _ = self.stasis("inspect", "--verify", img)
            if rc != 0:
                raise CaseFailure(f"inspect --verify failed (exit {rc}):\n{err.strip()}")

            if cycle == 0 and a.inspect:
                rc, out, err, _ = self.stasis("inspect", img)
                if rc != 0:
                    raise CaseFailure(f"inspect failed (exit {rc}):\n{err.strip()}")
                try:
                    json.loads(out)
                except ValueError as e:
                    raise CaseFailure(f"inspect did not print JSON ({e}): {out[:500]!r}")

            if cycle == 0 and a.corrupt:
                pristine = os.path.join(self.tmp, "pristine.img")
                shutil.copyfile(imgfile, pristine)
                self.corrupt(imgfile, a.corrupt)
                words = ["checksum"] if a.corrupt == "flip-page" else ["truncated"]
                self.expect_failed_restore(img, words, f"corrupt {a.corrupt}")
                os.replace(pristine, imgfile)  # then the intact image must still restore

            if cycle == 0 and a.change_file_size:
                path = os.path.realpath(os.path.join(self.tmp, a.change_file_size))
                st = os.stat(path)
                with open(path, "ab") as f:
                    f.write(b"grown while dumped\n")
                self.expect_failed_restore(img, [path], f"size of {path} changed")
                os.truncate(path, st.st_size)  # back as it was: the restore must now work
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

            if cycle == 0 and a.expect_restore_failure:
                self.expect_failed_restore(img, a.expect_restore_failure, "restore without its arguments")

            pid, t_restore = self.restore(img)
            self.timings.append((cycle, t_dump, t_restore, size))
            log(f"cycle {cycle}: dump {t_dump:.3f} s, restore {t_restore:.3f} s, image {size} bytes, "
                f"restored as host pid {pid}")
            self.check_restored(pid)
        self.finish(pid)
        self.check_no_leftovers("after the program ended")


def status_from_rc(rc):
    """Popen.returncode back to a wait status."""
    return (rc & 0xFF) << 8 if rc >= 0 else -rc


def wait_status_text_rc(rc):
    return wait_status_text(status_from_rc(rc))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stasis", help="path of the stasis binary")
    p.add_argument("--program", nargs="+", required=True, metavar="PATH [ARGS]", help="program and its arguments")
    p.add_argument("--interpreter", help="run the program with this interpreter")
    p.add_argument("--cycles", type=int, default=1)
    p.add_argument("--leave-running", action="store_true")
    p.add_argument("--restore-left-running", action="store_true",
                   help="with --leave-running: then kill the original and restore the image")
    p.add_argument("--trigger", choices=["sigusr2", "none"], default="sigusr2")
    p.add_argument("--expect-syscall", metavar="NR[,NR]")
    p.add_argument("--expect-dump-failure", metavar="REGEX")
    p.add_argument("--xfail-dump-refusal", metavar="REGEX")
    p.add_argument("--corrupt", choices=["flip-page", "truncate"])
    p.add_argument("--change-file-size", metavar="RELPATH", help="file (relative to the temp dir) to grow after dump")
    p.add_argument("--inspect", action="store_true", help="check `stasis inspect` prints JSON after the first dump")
    p.add_argument("--no-dump", action="store_true", help="run the program alone (checks the program itself)")
    p.add_argument("--user", help="run the program as this user (e.g. nobody)")
    p.add_argument("--restore-arg", action="append", default=[], help="extra argument for stasis restore")
    p.add_argument("--dump-arg", action="append", default=[], help="extra argument for stasis dump")
    p.add_argument("--expect-restore-failure", metavar="WORD", action="append", default=[],
                   help="a first restore without --restore-arg must fail, naming WORD, and leave "
                        "nothing behind; then the real restore")
    p.add_argument("--on-terminal", action="store_true",
                   help="run the program as the foreground job of a shell on a pty the runner holds, "
                        "and stasis restore as one on another pty; after the trigger the program "
                        "must talk through its terminal (see talk_to_job)")
    p.add_argument("--stream", choices=["pipe", "socket"],
                   help="send the image through a pipe or a unix socket pair (dump -o - | restore -i -)")
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args(argv)
    if a.stream and (a.on_terminal or a.leave_running or a.corrupt or a.change_file_size
                     or a.expect_restore_failure):
        p.error("--stream does not combine with --on-terminal, --leave-running, --corrupt, "
                "--change-file-size or --expect-restore-failure")
    if not a.no_dump and not a.stasis:
        p.error("--stasis is required unless --no-dump")
    if a.cycles < 1:
        p.error("--cycles must be >= 1")
    return a


def main(argv):
    args = parse_args(argv)
    set_child_subreaper()
    case = Case(args)
    result, message = 1, ""
    try:
        case.run()
        result = 0
    except ExpectedRefusal as e:
        result, message = 77, str(e)
    except CaseFailure as e:
        message = str(e)
    except Exception as e:  # a bug here must still clean up and say why
        message = f"runner error: {type(e).__name__}: {e}"
    finally:
        try:
            leftovers = case.case_processes()
            if leftovers:
                log("killing leftover processes: " + "; ".join(describe(p) for p in leftovers))
            case.kill_all()
        except Exception as e:
            log(f"cleanup error: {e}")
    if case.timings:
        total_d = sum(t[1] for t in case.timings)
        total_r = sum(t[2] for t in case.timings)
        log(f"timings: {len(case.timings)} cycles, dump total {total_d:.3f} s, restore total {total_r:.3f} s")
    if result == 0:
        shutil.rmtree(case.tmp, ignore_errors=True)
        log("PASS")
    elif result == 77:
        shutil.rmtree(case.tmp, ignore_errors=True)
        log(f"XFAIL: {message}")
    else:
        text = case.log_text()
        log(f"FAIL: {message}")
        log(f"--- program log ({case.logpath}) ---\n{text.rstrip()}\n--- end of log ---")
        log(f"temp dir kept: {case.tmp}")
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
