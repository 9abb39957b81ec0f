"""The fault-injection matrix of live migration (issue #12, point 4).

    test_migrate_faults.py --stasis BUILD/stasis PHASE-FAULT

An isolated session (--net=isolated, its own address) runs the workload of
migrate_workload.py (memory it checks every second, an echo server) on node
a of an emulated cluster (tests/cluster.py); `stasis receive --once` listens
on node b and `stasis migrate --session` moves it there over TLS. Both ends
run with --progress, and one fault is injected at one phase:

  phases
    hello      the receiver is stopped (SIGSTOP) before the source connects:
               the TLS handshake and Hello wait in its socket.
    precopy    a pre-copy round is under way (the link limited with
               --bandwidth, so a round takes seconds).
    image      the switch-over image is in flight: the tree is frozen on a,
               the receiver spools the image (a writer faster than the link
               and --postcopy=never, so the image carries seconds of pages).
    restoring  the receiver is stopped once it prints "tree" (it builds the
               tree from the image), before it says Ready.
    ready      the destination said Ready and the source has not sent
               Commit: the source is stopped once the receiver prints "tree"
               and stays stopped until the Ready frame sits in its socket.
    postcopy   --postcopy=always over a slow link: the tree runs on b while
               its pages are still on a.
  faults
    kill_source   kill -9 of `stasis migrate`
    kill_dest     kill -9 of `stasis receive`
    cut_link      node a's link taken down (both ends) for CUT_S seconds,
                  then put back: shorter than every timeout of the protocol,
                  so TCP carries on where it stopped.
    cut_long      the same for CUT_LONG_S seconds, longer than the ends'
                  30 s timeout for a silent peer (MigrateOptions::timeout_ms,
                  ReceiveOptions::timeout_ms): the migration must fail
                  cleanly, or in post-copy wait for the link (the issue's
                  post-copy recovery). Only where the phase has that timeout
                  (not restoring/ready, whose timeouts are 120 s and 300 s).

A process held with SIGSTOP is sent SIGCONT right after the fault. Then,
once both ends have exited, the test asserts:
  - where the tree runs: one copy of the workload (see EXPECT), its output
    goes on with memory checks, never CORRUPT nor CLOCK BACK; not stopped,
    not traced, not frozen;
  - where the design says the tree is lost (a fault after the switch-over
    point in post-copy: the pages that were still on the source are gone),
    zero copies, and nothing half-alive;
  - nothing left on either node: processes of the run other than the
    session's, cgroups under the node's parent other than the running
    session's, session links (a session netns' host end) other than the
    running session's, nft tables stasis_lock_* in the node namespaces or
    the session's, the session's state files on a node where it does not
    run, spool files in the ends' $TMPDIR; and, after the cluster's
    tear-down, nothing of the run (cluster.stale).

Cases whose failure shows a bug of the engine, not of the test, are listed
in KNOWN_BUGS with what goes wrong: they exit 77 (skipped, "KNOWN BUG") when
they fail that way, and fail when they pass, so that the entry is removed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from cluster import Cluster, cgroup_root, stale  # noqa: E402  (tests/cluster.py)

WORKLOAD = HERE / "migrate_workload.py"
PY = "/usr/bin/python3"
PORT = 7700
CUT_S = 5.0
CUT_LONG_S = 40.0
SESSION = "web"

PHASES = ["hello", "precopy", "image", "restoring", "ready", "postcopy"]
FAULTS = ["kill_source", "kill_dest", "cut_link", "cut_long"]
LONG_CUT_PHASES = ["hello", "precopy", "image", "postcopy"]

# Where the tree must run after the case: "a" (the source kept it), "b"
# (the migration went through), "a|b" (either, exactly one), "none" (lost).
# A kill before Commit leaves it on a. A short cut that TCP outlives lets
# the migration finish on b, or abort cleanly to a. After Commit in
# post-copy, pages exist only on the source until they are sent: killing
# either end loses the tree (docs/design.md: the tree is the destination's
# after Commit; its missing pages die with the source, its faulting threads
# with the destination's pager).
EXPECT = {
    **{f"{p}-kill_source": "a" for p in PHASES},
    **{f"{p}-kill_dest": "a" for p in PHASES},
    **{f"{p}-cut_link": "a|b" for p in PHASES},
    **{f"{p}-cut_long": "a" for p in LONG_CUT_PHASES},
    # The issue: a link that drops in post-copy pauses the destination's
    # faulting threads until the source is back.
    "postcopy-cut_long": "b",
    "postcopy-kill_source": "none",
    "postcopy-kill_dest": "none",
}

# Engine bugs the matrix found: id -> (what goes wrong, a pattern of the
# problem lines it causes).
BUGS = {
    "keeper": (
        "the packet keeper of the session's link lock (stasis-netkeeper) stays on the source "
        "node once the dump took the lock and did not lift it (a migration that went through, "
        "or a source killed after the freeze): nothing quits it, it gives up after kKeepFor "
        "(120 s) with the packets it kept for a session that runs elsewhere",
        r"stasis-netkeeper link/|process \d+ in node a's netns"),
    "sigtrap": (
        "stasis migrate killed -9 while the tree is frozen (seized) on the source: the tree "
        "dies of SIGTRAP (TRAP_BRKPT, raised in the workload itself, seen with perf "
        "signal:signal_generate) as soon as its tracer's death detaches it: zero copies where "
        "the design promises the source's. The dump's syscall injection single-steps "
        "(sys::Tracee::SingleStep), which leaves the task's single-step flag set; PTRACE_CONT "
        "or PTRACE_DETACH clear it, a tracer that dies does not, and the task traps at its "
        "next syscall exit (a 30-line C program reproduces it; PTRACE_CONT + PTRACE_INTERRUPT "
        "after the step cures it)",
        r"expected exactly one running copy on a, found 0"),
    "record": (
        "a receive that fails (or is killed) after it registered the session (before_release "
        "runs the registrar before Ready) leaves the session's record (web.json, listed 'gone' "
        "by stasis ps) and its cgroup on the destination node",
        r"under node b's parent|state files on node b|`stasis ps` on node b lists"),
    "commit": (
        "the destination is killed after it sent Ready and before it read Commit; the source "
        "reads the queued Ready, sends Commit into the dead connection, counts it as the "
        "switch-over and kills its tree: zero copies (the source kills on any failure after "
        "sending Commit, without knowing that the destination released the tree)",
        r"expected exactly one running copy on a, found 0"),
    "lock": (
        "stasis migrate killed -9 after the freeze took the session's network lock (its host "
        "link down, a packet keeper started): the tree runs on at the source, but nobody lifts "
        "the lock, so the session no longer answers on its address and the keeper stays until "
        "it gives up (kKeepFor, 120 s)",
        r"does not answer on its address|stasis-netkeeper link/|process \d+ in node a's netns"),
    "hang": (
        "stasis receive waits on (post-copy recovery) for a source that was killed -9: the "
        "destination's tree, whose pages died with the source, is neither given up nor killed "
        "within the case's time",
        r"still runs \d+ s after the fault"),
    "recovery": (
        "no post-copy recovery: a link down longer than 30 s in post-copy makes the "
        "destination give up ('stayed silent past the deadline') and its tree die, and the "
        "source, which still held every missing page, kill its frozen tree when the link comes "
        "back (ECONNRESET): zero copies where the issue wants the faulting threads paused until "
        "the source reconnects",
        r"expected exactly one running copy on b, found 0"),
}

# case -> the bugs it shows: measured on m-lead 36ca601 (after the lead's
# fixes of the single-step flag, the keeper after a move, the source killing
# its tree when Done never came, a failed receive's record), with
# postcopy-kill_source's hang seen once and cut_long not rerun there.
# Post-copy: how long either end waits for the other after the link broke
# (`--recovery-timeout`): longer than the long cut, short enough that a
# killed end is given up on within the case's time.
RECOVERY_S = 60

KNOWN_BUGS: dict[str, list[str]] = {
    # Measured on m-lead a65f0d2 + the exit-kill of the source's tree after
    # the commit (the lead's run of the whole matrix).
    "image-kill_source": ["lock"],
    "restoring-kill_source": ["lock"],
    "ready-kill_source": ["lock"],
    "ready-kill_dest": ["record"],
    "postcopy-kill_source": ["keeper"],
    "postcopy-kill_dest": ["record"],
}


def explained(case: str, problems: list[str]) -> bool:
    """True when every problem line is one of the case's known bugs."""
    patterns = [BUGS[b][1] for b in KNOWN_BUGS.get(case, [])]
    lines = [x for x in problems if x.strip() and not x.startswith("the workload's last")]
    return bool(lines) and all(any(re.search(p, x) for p in patterns) for x in lines)


class Failed(Exception):
    def __init__(self, msg: str, problems: Optional[list[str]] = None) -> None:
        super().__init__(msg)
        self.problems = problems or []


def fail(msg: str) -> None:
    raise Failed(msg)


def wait_for(pred: Callable[[], bool], what: str, timeout: float = 30, step: float = 0.05) -> None:
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            fail(f"timed out waiting for {what}")
        time.sleep(step)


def proc_state(pid: int) -> str:
    """The state letter of /proc/PID/stat, "" when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def phase_lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return re.findall(r"stasis: progress: (\w+)", text)


class Case:
    """One migration with one fault, and what it started."""

    def __init__(self, c: Cluster, stasis: str, phase: str, fault: str, work: Path) -> None:
        self.c = c
        self.a, self.b = c.nodes["a"], c.nodes["b"]
        self.stasis = stasis
        self.phase = phase
        self.fault = fault
        self.dir = work
        self.out = work / "session.out"
        self.token = work / "token"
        self.token.write_text(os.urandom(24).hex() + "\n")
        self.token.chmod(0o600)
        self.tmp = {n: work / f"tmp-{n}" for n in ("a", "b")}
        for d in self.tmp.values():
            d.mkdir()
        self.src_err = work / "migrate.err"
        self.dst_err = work / "receive.err"
        self.src: Optional[subprocess.Popen] = None
        self.dst: Optional[subprocess.Popen] = None
        self.stopped: list[int] = []

    # -- what the case runs -----------------------------------------------
    def workload_args(self) -> tuple[int, float]:
        """MiB and MiB/s written: writers faster than the link where the
        phase must last (the image, post-copy)."""
        if self.phase in ("image", "postcopy"):
            return 32, 20
        return 64, 0

    def migrate_args(self) -> list[str]:
        if self.phase == "image":
            return ["--bandwidth", "80", "--postcopy=never"]
        if self.phase == "postcopy":
            return ["--bandwidth", "80", "--postcopy=always"]
        if self.phase == "precopy":
            return ["--bandwidth", "100"]
        return []

    def env(self, node) -> dict:
        env = node.env()
        env["TMPDIR"] = str(self.tmp[node.name])
        return env

    def start_session(self) -> None:
        mib, rate = self.workload_args()
        self.a.run(["stasis", "run", "-d", "--name", SESSION, "--net=isolated", "--address",
                    self.c.session_address(10), "--", PY, str(WORKLOAD), "--mib", str(mib),
                    "--write-mib-s", str(rate), "--port", "7000", str(self.out)],
                   env=self.env(self.a))
        wait_for(lambda: self.out.exists() and "checked" in self.out.read_text(),
                 "the session to start", 60)

    def start_receiver(self) -> None:
        self.dst = self.b.popen(["stasis", "receive", "--listen", f"{self.b.address}:{PORT}",
                                 "--once", "--json", "--progress", "--token-file", str(self.token),
                                 "--recovery-timeout", str(RECOVERY_S)],
                                stdout=open(self.dir / "receive.out", "w"),
                                stderr=open(self.dst_err, "w"), env=self.env(self.b))
        wait_for(lambda: "receiving on" in self.dst_err.read_text(), "the receiver to listen")

    def start_source(self) -> None:
        self.src = self.a.popen(["stasis", "migrate", "--session", SESSION, "--to",
                                 f"{self.b.address}:{PORT}", "--token-file", str(self.token),
                                 "--json", "--progress", "--recovery-timeout", str(RECOVERY_S),
                                 *self.migrate_args()],
                                stdout=open(self.dir / "migrate.out", "w"),
                                stderr=open(self.src_err, "w"), env=self.env(self.a))

    def stop(self, p: subprocess.Popen) -> None:
        signal_pid(p.pid, signal.SIGSTOP)
        self.stopped.append(p.pid)

    def resume_all(self) -> None:
        for pid in self.stopped:
            signal_pid(pid, signal.SIGCONT)
        self.stopped.clear()

    def ended(self) -> bool:
        return self.src is not None and self.src.poll() is not None

    def wait_phase(self, path: Path, phase: str, timeout: float = 60) -> None:
        def seen() -> bool:
            if phase in phase_lines(path):
                return True
            if self.src.poll() is not None or self.dst.poll() is not None:
                fail(f"an end exited before phase {phase}: migrate {self.src.poll()}, "
                     f"receive {self.dst.poll()}\n{self.logs()}")
            return False
        wait_for(seen, f"phase {phase} in {path.name}", timeout, 0.005)

    def source_socket_queue(self) -> int:
        """Bytes waiting in the source's socket to the receiver (Recv-Q)."""
        r = self.a.run(["ss", "-tnH", "state", "established", "dst", f"{self.b.address}:{PORT}"],
                       check=False)
        queues = [int(line.split()[0]) for line in r.stdout.splitlines() if line.strip()]
        return max(queues, default=0)

    def connected(self) -> bool:
        r = self.a.run(["ss", "-tnH", "state", "established", "dst", f"{self.b.address}:{PORT}"],
                       check=False)
        return bool(r.stdout.strip())

    # -- bringing the migration to its phase ----------------------------------
    def reach_phase(self) -> None:
        """Starts the migration and returns once it is in self.phase, with
        the ends that must not move on stopped."""
        if self.phase == "hello":
            self.stop(self.dst)
            self.start_source()
            self.wait_phase(self.src_err, "connect")
            wait_for(self.connected, "the source's connection")
            time.sleep(0.3)
            return
        self.start_source()
        if self.phase == "precopy":
            self.wait_phase(self.src_err, "precopy")
            time.sleep(1.0)
        elif self.phase == "image":
            self.wait_phase(self.src_err, "pages")
            time.sleep(0.5)
            if "tree" in phase_lines(self.dst_err):
                fail(f"missed the phase: the receiver already builds the tree\n{self.logs()}")
        elif self.phase == "restoring":
            self.wait_phase(self.dst_err, "tree")
            self.stop(self.dst)
        elif self.phase == "ready":
            self.wait_phase(self.dst_err, "tree")
            self.stop(self.src)
            if "commit" in phase_lines(self.src_err):
                fail(f"missed the phase: the source sent Commit already\n{self.logs()}")
            # The Ready frame in the stopped source's socket.
            wait_for(lambda: self.source_socket_queue() > 0, "the destination's Ready", 30)
        elif self.phase == "postcopy":
            self.wait_phase(self.src_err, "postcopy", 90)
            time.sleep(0.5)

    def inject(self) -> None:
        print(f"{time.strftime('%T')} fault {self.fault} in phase {self.phase}", flush=True)
        if self.fault == "kill_source":
            signal_pid(self.src.pid, signal.SIGKILL)
            self.resume_all()
        elif self.fault == "kill_dest":
            signal_pid(self.dst.pid, signal.SIGKILL)
            self.resume_all()
        else:
            self.a.set_link(False)
            self.resume_all()
            time.sleep(CUT_S if self.fault == "cut_link" else CUT_LONG_S)
            self.a.set_link(True)

    def wait_ends(self, timeout: float = 150) -> None:
        deadline = time.time() + timeout
        for p, what in ((self.src, "stasis migrate"), (self.dst, "stasis receive")):
            try:
                p.wait(timeout=max(deadline - time.time(), 1))
            except subprocess.TimeoutExpired:
                msg = f"{what} still runs {timeout:.0f} s after the fault (a hang)"
                raise Failed(f"{msg}\n{self.logs()}", [msg])
        print(f"migrate exited {self.src.returncode}, receive exited {self.dst.returncode}",
              flush=True)

    def logs(self) -> str:
        parts = []
        for path in (self.src_err, self.dst_err):
            text = path.read_text() if path.exists() else ""
            # One line per phase: a phase with bytes reports itself often.
            lines: list[str] = []
            for line in text.splitlines():
                key = re.sub(r"(progress: \w+).*", r"\1", line)
                if not lines or re.sub(r"(progress: \w+).*", r"\1", lines[-1]) != key:
                    lines.append(line)
            parts.append(f"--- {path.name}:\n" + "\n".join(lines[-25:]))
        return "\n".join(parts)

    def cleanup(self) -> None:
        self.resume_all()
        for p in (self.src, self.dst):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


# -- what is left after the dust settles -----------------------------------
def workload_copies(out: Path) -> list[int]:
    """Processes running the workload with this case's output file."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        # The session's init is a fork of `stasis run`: its argv holds the
        # workload's too.
        if argv[0].endswith(b"python3") and str(WORKLOAD).encode() in argv and \
                str(out).encode() in argv:
            if proc_state(int(entry)) not in ("", "Z", "X"):
                pids.append(int(entry))
    return pids


def node_of(pid: int, run_id: str) -> str:
    try:
        cg = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return "?"
    m = re.search(rf"stasis-{run_id}-(\w+)", cg)
    return m.group(1) if m else "?"


def cgroup_of(pid: int) -> Optional[Path]:
    root = cgroup_root()
    try:
        line = [x for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                if x.startswith("0::")][0]
    except (OSError, IndexError):
        return None
    return Path(root + line[3:]) if root else None


def session_cgroup_dirs(run_id: str, node: str) -> list[str]:
    root = cgroup_root()
    base = Path(root) / f"stasis-{run_id}-{node}" if root else None
    if base is None or not base.is_dir():
        return []
    return sorted(str(Path(d).relative_to(base)) for d, _, _ in os.walk(base) if Path(d) != base)


def nft_tables(argv_prefix: list[str]) -> list[str]:
    r = subprocess.run([*argv_prefix, "nft", "list", "tables"], capture_output=True, text=True)
    return [x for x in r.stdout.splitlines() if "stasis_lock_" in x]


def leftovers(case: Case, running_on: Optional[str], copies: list[int]) -> list[str]:
    c, run_id = case.c, case.c.run_id
    left = []
    # Processes: only the running session's (its cgroup) may remain.
    allowed: set[int] = set(copies)
    for pid in copies:
        cg = cgroup_of(pid)
        if cg is not None and (cg / "cgroup.procs").exists():
            allowed.update(int(x) for x in (cg / "cgroup.procs").read_text().split())
            allowed.add(pid)
    from cluster import _marked_pids  # noqa: E402  (the run's own processes)

    for pid in _marked_pids(run_id):
        if pid not in allowed and proc_state(pid) not in ("", "Z", "X"):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
            left.append(f"process {pid} ({proc_state(pid)}): {cmd.decode(errors='replace')}")
    for name, node in c.nodes.items():
        r = subprocess.run(["ip", "netns", "pids", node.netns], capture_output=True, text=True)
        for pid in map(int, r.stdout.split()):
            if pid not in allowed:
                left.append(f"process {pid} in node {name}'s netns")
        cgs = session_cgroup_dirs(run_id, name)
        want_cg = name == running_on
        extra = [d for d in cgs if not (want_cg and d.split("/")[0] == SESSION)]
        left += [f"cgroup {d} under node {name}'s parent" for d in extra]
        links = node.run(["ip", "-o", "link", "show"], check=False).stdout
        hosts = re.findall(r"^\d+: (stc\w+)", links, re.M)
        if len(hosts) > (1 if want_cg else 0):
            left.append(f"session links on node {name}: {hosts}")
        left += [f"nft {t} in node {name}" for t in nft_tables(["ip", "netns", "exec", node.netns])]
        states = [p for p in Path(node.state_dir).rglob("*") if SESSION in p.name]
        if states and not want_cg:
            left.append(f"state files on node {name}, where {SESSION} does not run: "
                        f"{[str(p) for p in states]}")
        ps = node.run(["stasis", "ps"], check=False).stdout
        if (SESSION in ps) != want_cg:
            left.append(f"`stasis ps` on node {name} {'lacks' if want_cg else 'lists'} {SESSION}:"
                        f" {ps.strip()}")
        spool = list(case.tmp[name].iterdir())
        left += [f"spool file {p}" for p in spool]
    for pid in copies:
        left += [f"nft {t} in the session's netns"
                 for t in nft_tables(["nsenter", "-t", str(pid), "-n"])]
    return left


def healthy(out: Path, what: str) -> None:
    """The output goes on with two more memory checks; nothing in it, before
    or after, says CORRUPT or CLOCK BACK (a copy that ran on bad memory is
    not healthy even if it is gone now)."""
    since = out.stat().st_size

    def checked() -> bool:
        text = out.read_text()
        for bad in ("CORRUPT", "CLOCK BACK"):
            if bad in text:
                i = text.find(bad)
                fail(f"{what}: {text[i:i + 200]}")
        return text[since:].count("checked") >= 2
    wait_for(checked, f"{what}: the workload to check its memory twice", 30)


# Run in the client namespace: one line through the session's echo server.
ECHO = r"""
import socket, sys, time
deadline = time.time() + float(sys.argv[3])
while True:
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
            s.sendall(b"still there\n")
            if s.recv(100) == b"still there\n":
                sys.exit(0)
    except OSError as e:
        err = e
    if time.time() > deadline:
        print(err)
        sys.exit(1)
    time.sleep(0.2)
"""


def answers(case: Case) -> None:
    """The session's address reaches the copy that runs (a link left down
    or a lock left in place would not)."""
    r = case.c.client.run([PY, "-c", ECHO, case.c.session_address(10, False), "7000", "15"],
                          check=False)
    if r.returncode != 0:
        fail(f"the session does not answer on its address from the client: {r.stdout.strip()}")


def not_half_alive(pid: int) -> None:
    state = proc_state(pid)
    if state in ("T", "t", "D"):
        fail(f"the copy {pid} is in state {state} (stopped, traced or stuck)")
    cg = cgroup_of(pid)
    if cg is not None and (cg / "cgroup.events").exists():
        if "frozen 1" in (cg / "cgroup.events").read_text():
            fail(f"the copy {pid} is in a frozen cgroup {cg}")


def settle_and_check(case: Case) -> str:
    """Asserts what EXPECT says for the case; returns where the tree runs.
    Every problem found is in the failure, the leftovers too."""
    name = f"{case.phase}-{case.fault}"
    # A lost tree may take a moment to die (its pager gone, a fault kills it).
    time.sleep(2)
    copies = workload_copies(case.out)
    where = sorted(node_of(p, case.c.run_id) for p in copies)
    print(f"copies of the workload: {copies} on {where}", flush=True)
    want = EXPECT[name]
    problems = []
    running_on: Optional[str] = None
    if want == "none":
        if copies:
            problems.append(f"the design loses the tree here, yet {len(copies)} copies run on "
                            f"{where}")
        text = case.out.read_text()
        if "CORRUPT" in text:
            i = text.find("CORRUPT")
            problems.append(f"the lost tree ran on bad memory before it died: {text[i:i + 200]}")
    elif len(copies) != 1:
        problems.append(f"expected exactly one running copy on {want}, found {len(copies)}: "
                        f"{copies} on {where}")
    else:
        running_on = where[0]
        if running_on not in want.split("|"):
            problems.append(f"the tree runs on node {running_on}, expected {want}")
        try:
            not_half_alive(copies[0])
            healthy(case.out, f"on node {running_on}")
            answers(case)
        except Failed as e:
            problems.append(str(e))
    if problems:
        tail = case.out.read_text().splitlines()[-3:]
        problems.append(f"the workload's last lines: {tail}")
    problems += [f"left behind: {x}" for x in leftovers(case, running_on, copies)]
    if problems:
        raise Failed("\n  ".join(["", *problems]), problems)
    return running_on or "none"


def run_case(stasis: str, phase: str, fault: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="stasis-mfault-"))
    with Cluster(["a", "b"], stasis=stasis) as c:
        run_id = c.run_id
        case = Case(c, stasis, phase, fault, work)
        try:
            case.start_session()
            case.start_receiver()
            case.reach_phase()
            case.inject()
            case.wait_ends()
            print(case.logs(), flush=True)
            where = settle_and_check(case)
            print(f"the tree runs on: {where}", flush=True)
        finally:
            case.cleanup()
    left = stale(run_id)
    if left:
        fail(f"the cluster's tear-down left: {left}")
    subprocess.run(["rm", "-rf", str(work)])


def main() -> None:
    cases = [f"{p}-{f}" for p in PHASES for f in FAULTS
             if f != "cut_long" or p in LONG_CUT_PHASES]
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", required=True)
    ap.add_argument("case", choices=cases)
    a = ap.parse_args()
    phase, fault = a.case.split("-")
    bugs = KNOWN_BUGS.get(a.case, [])
    try:
        run_case(os.path.abspath(a.stasis), phase, fault)
    except Failed as e:
        print(f"FAIL: {a.case}: {e}", flush=True)
        if explained(a.case, e.problems):
            for b in bugs:
                print(f"KNOWN BUG [{b}]: {BUGS[b][0]}", flush=True)
            sys.exit(77)
        sys.exit(1)
    if bugs:
        print(f"XPASS: {a.case} passed but KNOWN_BUGS lists {bugs} for it: remove them", flush=True)
        sys.exit(1)
    print(f"PASS: {a.case}")


if __name__ == "__main__":
    main()
