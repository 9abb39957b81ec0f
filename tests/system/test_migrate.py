"""Live migration (stasis migrate / stasis receive) with real processes.

    test_migrate.py --stasis BUILD/stasis CASE

Cases on this host's loopback (a tree, not a session: no own network):
  local_insecure   a 64 MiB idle tree moves to a receiver on 127.0.0.1
                   (--insecure): it goes on there with every page as it was.
  local_tls        the same over TLS keyed from a token file.
  busy_converges   a tree writing 20 MiB/s over an unlimited link: rounds
                   converge and it moves within its budget.
  busy_postcopy    a tree writing 60 MiB/s, faster than a 200 Mbit/s link: rounds do not
                   converge, post-copy (auto) takes over, pages arrive on
                   fault and in the background; every page checked after.
  postcopy_always  --postcopy=always right after one round.
  huge_postcopy    the same with the memory in MADV_HUGEPAGE (as numpy's):
                   served on fault too, never a huge page of zeros over
                   pages still to come.
  postcopy_fork    post-copy of a tree whose child shares its parent's memory
                   copy-on-write (a fork without exec): the pages the child
                   inherits cross before the tree runs, the rest later; both
                   check their memory after.
  busy_never       --postcopy=never: copies anyway, saying by how much the
                   budget was exceeded.
  wrong_token      the receiver has another token: refused before anything is
                   read; the tree runs on untouched.
  token_mode       a token file readable by others is refused by both ends.
  plain_vs_tls     --insecure against a TLS receiver: refused, clearly.
  outside_tcp      a tree holding a TCP connection to a peer outside it is
                   refused (its address cannot move); it runs on.
  kill_source      the source is killed -9 during pre-copy: the tree runs on
                   at the source, the receiver keeps nothing.
  kill_dest        the receiver is killed -9 during pre-copy: the source says
                   so, the tree runs on.
  kill_dest_postcopy  the receiver is killed -9 during post-copy, pages still on
                   the source: the tree is lost (the design says so: it ran on
                   the destination already), and it dies there rather than run
                   on with zero pages where its data was; nothing is left.

Cases between two emulated machines (tests/cluster.py: nodes a and b, a
client namespace on the same layer-2 segment):
  session_stream   an isolated session (its own address) runs the workload's
                   echo server; a client outside streams "word N" lines
                   through it while the session moves a -> b -> a over TLS:
                   every byte once, in order, no reset; the longest stall is
                   printed. Nothing of the run is left at the end.
  address_in_use   the destination already has a session at the session's
                   address: refused at hello, naming it; the session runs on.
  postcopy_link_cut  post-copy between the machines, and the source's link is
                   cut for 8 s with pages still on the source: the
                   destination's faulting threads wait, the source
                   reconnects and sends what is missing; the session runs on
                   b with every page, nothing is left on a.

The workload (migrate_workload.py) checks its own memory every second and
its monotonic clock; the test reads its output file. Every process the test
started is killed at its end, also on failure.
"""

from __future__ import annotations

import argparse
import json
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
WORKLOAD = HERE / "migrate_workload.py"
PY = "/usr/bin/python3"


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def wait_for(pred: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().split(") ")[1].split()[1])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] not in "ZX"
    except (FileNotFoundError, IndexError):
        return False


class Run:
    """What one case started, killed at its end whatever happened."""

    def __init__(self, stasis: str) -> None:
        self.stasis = stasis
        self.dir = Path(tempfile.mkdtemp(prefix="stasis-migrate-"))
        self.procs: list[subprocess.Popen] = []
        self.pids: list[int] = []

    def workload(
        self,
        mib: int = 64,
        rate: float = 0,
        port: int = 0,
        huge: bool = False,
        fork: bool = False,
    ) -> tuple[int, Path]:
        out = self.dir / f"workload{len(self.procs)}.out"
        argv = [PY, str(WORKLOAD), "--mib", str(mib), "--write-mib-s", str(rate)]
        if huge:
            argv.append("--huge")
        if fork:
            argv.append("--fork")
        if port:
            argv += ["--port", str(port)]
        p = subprocess.Popen(
            argv + [str(out)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(p)
        wait_for(
            lambda: out.exists() and "tick" in out.read_text(),
            "the workload to start",
            60,
        )
        return p.pid, out

    def token(self, name: str = "token", mode: int = 0o600, data: str = "") -> Path:
        path = self.dir / name
        path.write_text(data or os.urandom(24).hex() + "\n")
        path.chmod(mode)
        return path

    def receiver(self, *args: str) -> tuple[subprocess.Popen, str]:
        err = self.dir / f"receive{len(self.procs)}.err"
        p = subprocess.Popen(
            [self.stasis, "receive", "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            stderr=open(err, "w"),
            text=True,
        )
        self.procs.append(p)
        wait_for(lambda: "receiving on" in err.read_text(), "the receiver to listen")
        addr = re.search(r"receiving on (\S+)", err.read_text()).group(1)
        p.err_path = err  # type: ignore[attr-defined]
        return p, addr

    def migrate(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [self.stasis, "migrate", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        print(f"migrate {' '.join(args)} -> {r.returncode}\n{r.stderr}", flush=True)
        return r

    def migrate_until(self, phase: str, *args: str) -> subprocess.Popen:
        """Starts `stasis migrate ARGS --progress` and returns once it
        reports `phase` (its stderr is left to read)."""
        src = subprocess.Popen(
            [self.stasis, "migrate", *args, "--progress"],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(src)
        for line in src.stderr:
            if f"progress: {phase}" in line:
                return src
        src.wait()
        fail(f"migrate ended (exit {src.returncode}) before its {phase} phase")
        raise AssertionError  # fail() exits

    def cleanup(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def received_pid(receiver: subprocess.Popen) -> int:
    out, _ = receiver.communicate(timeout=60)
    if receiver.returncode != 0:
        fail(
            f"receive exited {receiver.returncode}: {Path(receiver.err_path).read_text()}"
        )
    return int(out.split()[0])


def goes_on(out: Path, since: int, what: str) -> None:
    """The workload's output grows past `since` bytes with a full memory
    check, and never reports a corrupt page or a clock going back."""

    def checked() -> bool:
        text = out.read_text()[since:]
        if "CORRUPT" in text or "CLOCK BACK" in text:
            fail(f"{what}: {text[text.find('C'):][:200]}")
        return text.count("checked") >= 2

    wait_for(checked, f"{what}: the workload to check its memory twice", 30)


def tick(out: Path) -> int:
    ticks = re.findall(r"tick (\d+) ok", out.read_text())
    return int(ticks[-1]) if ticks else 0


def migrate_and_check(
    run: Run,
    mib: int,
    rate: float,
    chan: list[str],
    extra: list[str],
    expect: Optional[str] = None,
    huge: bool = False,
    fork: bool = False,
    postcopy: Optional[bool] = None,
) -> dict:
    pid, out = run.workload(mib, rate, huge=huge, fork=fork)
    receiver, addr = run.receiver("--once", "--json", *chan)
    before = tick(out)
    r = run.migrate("-t", str(pid), "--to", addr, "--json", *chan, *extra)
    if r.returncode != 0:
        fail(f"migrate failed: {r.stderr}")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    out_json, _ = receiver.communicate(timeout=60)
    if receiver.returncode != 0:
        fail(f"receive failed: {Path(receiver.err_path).read_text()}")
    received = json.loads(out_json.strip().splitlines()[-1])
    run.pids.append(received["root_pid"])
    # The init of its PID namespace: killing it at the end takes every
    # process of the tree (the workload's forked child too).
    run.pids.append(ppid(received["root_pid"]))
    wait_for(lambda: not alive(pid), "the source tree to be gone")
    size = out.stat().st_size
    goes_on(out, size, "after the migration")
    if tick(out) <= before:
        fail("the workload did not go on after the migration")
    if expect and expect not in summary["decision"]:
        fail(f"expected '{expect}' in the decision, got: {summary['decision']}")
    print(
        f"summary: {json.dumps(summary)}\nreceived: {json.dumps(received)}", flush=True
    )
    return summary


def case_local_insecure(run: Run) -> None:
    migrate_and_check(run, 64, 0, ["--insecure"], [])


def case_local_tls(run: Run) -> None:
    token = run.token()
    migrate_and_check(run, 64, 0, ["--token-file", str(token)], [])


def case_busy_converges(run: Run) -> None:
    # A tree writing 20 MiB/s on loopback converges without post-copy.
    migrate_and_check(run, 256, 20, ["--insecure"], [], postcopy=False)


def case_busy_postcopy(run: Run) -> None:
    migrate_and_check(
        run, 64, 60, ["--insecure"], ["--bandwidth", "200"], "post-copy", postcopy=True
    )


def case_postcopy_always(run: Run) -> None:
    migrate_and_check(run, 128, 5, ["--insecure"], ["--postcopy=always"], postcopy=True)


def case_huge_postcopy(run: Run) -> None:
    migrate_and_check(
        run,
        128,
        20,
        ["--insecure"],
        ["--postcopy=always", "--bandwidth", "400"],
        huge=True,
        postcopy=True,
    )


def case_postcopy_fork(run: Run) -> None:
    migrate_and_check(
        run,
        64,
        20,
        ["--insecure"],
        ["--postcopy=always", "--bandwidth", "400"],
        fork=True,
        postcopy=True,
    )
    child = Path(str(run.dir / "workload0.out") + ".child")
    size = child.stat().st_size
    wait_for(
        lambda: child.read_text()[size:].count("child checked") >= 2,
        "the child to check its memory after the migration",
        30,
    )
    if "CORRUPT" in child.read_text():
        fail("the child's memory: " + child.read_text()[-200:])


def case_busy_never(run: Run) -> None:
    migrate_and_check(
        run,
        64,
        60,
        ["--insecure"],
        ["--bandwidth", "200", "--postcopy=never"],
        "over the",
    )


def refused_and_running(
    run: Run, pid: int, r: subprocess.CompletedProcess, want: str
) -> None:
    if r.returncode == 0:
        fail("the migration should have been refused")
    if want not in r.stderr:
        fail(f"expected '{want}' in: {r.stderr}")
    if not alive(pid):
        fail("the source tree died")


def case_wrong_token(run: Run) -> None:
    pid, out = run.workload(16)
    receiver, addr = run.receiver("--once", "--token-file", str(run.token("a")))
    r = run.migrate("-t", str(pid), "--to", addr, "--token-file", str(run.token("b")))
    refused_and_running(run, pid, r, "token")
    receiver.wait(timeout=30)
    goes_on(out, out.stat().st_size, "after a refused migration")


def case_token_mode(run: Run) -> None:
    pid, _ = run.workload(16)
    loose = run.token("loose", 0o644)
    r = subprocess.run(
        [
            run.stasis,
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--once",
            "--token-file",
            str(loose),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode == 0 or str(loose) not in r.stderr:
        fail(f"receive should refuse {loose}: {r.stderr}")
    r2 = run.migrate("-t", str(pid), "--to", "127.0.0.1:1", "--token-file", str(loose))
    refused_and_running(run, pid, r2, str(loose))


def case_plain_vs_tls(run: Run) -> None:
    pid, _ = run.workload(16)
    receiver, addr = run.receiver("--once", "--token-file", str(run.token()))
    r = run.migrate("-t", str(pid), "--to", addr, "--insecure")
    refused_and_running(run, pid, r, "insecure")
    receiver.wait(timeout=30)


def case_outside_tcp(run: Run) -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    code = (
        f"import socket,time; s=socket.create_connection(('127.0.0.1',{port})); "
        "print('up',flush=True); time.sleep(600)"
    )
    p = subprocess.Popen(
        [PY, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    run.procs.append(p)
    conn, _ = listener.accept()
    p.stdout.readline()
    receiver, addr = run.receiver("--once", "--insecure")
    r = run.migrate("-t", str(p.pid), "--to", addr, "--insecure")
    refused_and_running(run, p.pid, r, "outside the tree")
    conn.sendall(b"x")  # the connection still works: not in repair mode, no reset
    conn.close()
    listener.close()


def kill_during_precopy(run: Run, victim: str) -> None:
    pid, out = run.workload(512, 80)
    receiver, addr = run.receiver("--once", "--insecure")
    src = run.migrate_until(
        "precopy", "-t", str(pid), "--to", addr, "--insecure", "--bandwidth", "200"
    )
    (src if victim == "source" else receiver).send_signal(signal.SIGKILL)
    src.wait(timeout=60)
    receiver.wait(timeout=60)
    if victim == "dest" and src.returncode == 0:
        fail("the source reported success with its receiver killed")
    if not alive(pid):
        fail("the source tree died")
    goes_on(out, out.stat().st_size, f"after the {victim} was killed")
    # This run's copies only: their output file is the run's own.
    leftovers = subprocess.run(
        ["pgrep", "-f", str(out)], capture_output=True, text=True
    )
    pids = [int(x) for x in leftovers.stdout.split()]
    if pids != [pid]:
        fail(f"expected exactly one copy of the workload (pid {pid}), found {pids}")


def case_kill_source(run: Run) -> None:
    kill_during_precopy(run, "source")


def case_kill_dest(run: Run) -> None:
    kill_during_precopy(run, "dest")


# Runs in the client namespace: streams "word N" lines to HOST:PORT and reads
# them back until STOPFILE exists and every word came back; prints JSON.
STREAM_CLIENT = r"""
import json, os, socket, sys, threading, time
host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=60)
s.settimeout(1)
sent = [0]
errors = []
def send():
    try:
        while not os.path.exists(stop):
            s.sendall(b"word %d\n" % sent[0])
            sent[0] += 1
            time.sleep(0.002)
    except OSError as e:
        errors.append("send: %s" % e)
threading.Thread(target=send, daemon=True).start()
print("streaming", flush=True)
buf, want, last, stall = b"", 0, time.monotonic(), 0.0
reported = last
while True:
    if os.path.exists(stop) and want == sent[0] and sent[0] > 0:
        break
    try:
        d = s.recv(65536)
    except socket.timeout:
        # The last echo may have come before the stop file: look again.
        if time.monotonic() - last > 60:
            errors.append("no echo for 60 s")
            break
        continue
    except OSError as e:
        errors.append("recv: %s" % e)
        break
    now = time.monotonic()
    stall = max(stall, now - last)
    last = now
    if now - reported > 0.5:
        reported = now
        print("progress %d of %d" % (want, sent[0]), file=sys.stderr, flush=True)
    if not d:
        errors.append("connection closed by the server")
        break
    buf += d
    *lines, buf = buf.split(b"\n")
    for line in lines:
        if line != b"word %d" % want:
            errors.append("got %r, want word %d" % (line[:40], want))
            break
        want += 1
    if errors:
        break
print(json.dumps({"words": want, "sent": sent[0], "max_stall_ms": stall * 1000,
                  "errors": errors}), flush=True)
"""


def node_session(run: Run, node, address: str, *workload_args: str) -> Path:
    """Starts the workload as session "web" with its own network at
    `address` in a cluster node; returns its output file once it ticks."""
    out = run.dir / "session.out"
    node.run(
        [
            "stasis",
            "run",
            "-d",
            "--name",
            "web",
            "--net=isolated",
            "--address",
            address,
            "--",
            PY,
            str(WORKLOAD),
            *workload_args,
            str(out),
        ]
    )
    wait_for(
        lambda: out.exists() and "tick" in out.read_text(), "the session to start", 60
    )
    return out


def node_receiver(run: Run, node, *args: str) -> subprocess.Popen:
    """`stasis receive --once` on port 7700 of a cluster node, listening."""
    err = run.dir / f"receive-{node.name}-{len(run.procs)}.err"
    recv = node.popen(
        ["stasis", "receive", "--listen", f"{node.address}:7700", "--once", *args],
        stdout=subprocess.PIPE,
        stderr=open(err, "w"),
        text=True,
    )
    run.procs.append(recv)
    recv.err_path = err  # type: ignore[attr-defined]
    wait_for(lambda: "receiving on" in err.read_text(), "the receiver to listen")
    return recv


def case_session_stream(run: Run) -> None:
    sys.path.insert(0, str(HERE.parent))
    from cluster import Cluster, stale  # noqa: E402  (tests/cluster.py)

    with Cluster(["a", "b"], stasis=run.stasis) as c:
        run_id = c.run_id
        a, b = c.nodes["a"], c.nodes["b"]
        out = node_session(
            run, a, c.session_address(10), "--mib", "64", "--port", "7000"
        )
        token = run.token()
        stop = run.dir / "stop"
        progress = run.dir / "client.err"
        client = c.client.popen(
            [PY, "-c", STREAM_CLIENT, c.session_address(10, False), "7000", str(stop)],
            stdout=subprocess.PIPE,
            text=True,
            stderr=open(progress, "w"),
        )
        run.procs.append(client)
        if client.stdout.readline().strip() != "streaming":
            fail("the client could not connect to the session")
        time.sleep(1)
        for src, dst in ((a, b), (b, a)):
            recv = node_receiver(run, dst, "--json", "--token-file", str(token))
            err = recv.err_path  # type: ignore[attr-defined]
            r = src.run(
                [
                    "stasis",
                    "migrate",
                    "--session",
                    "web",
                    "--to",
                    f"{dst.address}:7700",
                    "--token-file",
                    str(token),
                    "--json",
                ],
                check=False,
            )
            print(
                f"migrate {src.name} -> {dst.name}: {r.returncode}\n{r.stderr}",
                flush=True,
            )
            if r.returncode != 0:
                fail(f"migrate {src.name} -> {dst.name}: {r.stderr}\n{err.read_text()}")
            recv.wait(timeout=60)
            print(err.read_text(), flush=True)
            if "web" not in dst.run(["stasis", "ps"]).stdout:
                fail(f"the session is not running on {dst.name}")
            if "web" in src.run(["stasis", "ps"]).stdout:
                fail(f"the session is still listed on {src.name}")
            goes_on(out, out.stat().st_size, f"on {dst.name}")
            time.sleep(1)
            print(
                f"client after the move to {dst.name}: "
                f"{progress.read_text().splitlines()[-1:]}",
                flush=True,
            )
        stop.write_text("")
        result, _ = client.communicate(timeout=60)
        stream = json.loads(result.strip().splitlines()[-1])
        print(f"client: {json.dumps(stream)}", flush=True)
        if stream["errors"] or stream["words"] != stream["sent"]:
            fail(f"the client's stream broke: {stream}")
    left = stale(run_id)
    if left:
        fail(f"left behind: {left}")


def case_kill_dest_postcopy(run: Run) -> None:
    pid, out = run.workload(128, 5)
    receiver, addr = run.receiver("--once", "--insecure")
    src = run.migrate_until(
        "postcopy",
        "-t",
        str(pid),
        "--to",
        addr,
        "--insecure",
        "--postcopy=always",
        "--bandwidth",
        "40",
    )
    receiver.send_signal(signal.SIGKILL)
    rest = src.stderr.read()
    src.wait(timeout=60)
    print(rest, flush=True)
    if src.returncode == 0:
        fail("the source reported success with its receiver killed during post-copy")
    wait_for(
        lambda: not subprocess.run(
            ["pgrep", "-f", str(out)], capture_output=True
        ).stdout,
        "every copy to be gone",
    )
    text = out.read_text()
    if "CORRUPT" in text:
        fail(
            "a copy ran on with pages it never got: "
            + text[text.find("CORRUPT") :][:200]
        )


def case_postcopy_link_cut(run: Run) -> None:
    sys.path.insert(0, str(HERE.parent))
    from cluster import Cluster, stale  # noqa: E402  (tests/cluster.py)

    with Cluster(["a", "b"], stasis=run.stasis) as c:
        run_id = c.run_id
        a, b = c.nodes["a"], c.nodes["b"]
        out = node_session(
            run, a, c.session_address(11), "--mib", "96", "--write-mib-s", "2"
        )
        token = run.token()
        recv = node_receiver(run, b, "--json", "--token-file", str(token))
        err = recv.err_path  # type: ignore[attr-defined]
        src = a.popen(
            [
                "stasis",
                "migrate",
                "--session",
                "web",
                "--to",
                f"{b.address}:7700",
                "--token-file",
                str(token),
                "--postcopy=always",
                "--bandwidth",
                "60",
                "--progress",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        run.procs.append(src)
        for line in src.stderr:
            if "progress: postcopy" in line:
                break
        time.sleep(1)
        a.set_link(False)
        time.sleep(8)
        a.set_link(True)
        rest = src.stderr.read()
        src.wait(timeout=120)
        print(rest, flush=True)
        recv.wait(timeout=60)
        print(err.read_text(), flush=True)
        if src.returncode != 0:
            fail("the migration did not survive the cut link")
        summary = json.loads(src.stdout.read().strip().splitlines()[-1])
        if summary["reconnects"] < 1:
            fail(f"expected the link to break and come back: {summary}")
        if "web" not in b.run(["stasis", "ps"]).stdout:
            fail("the session is not running on b")
        if "web" in a.run(["stasis", "ps"]).stdout:
            fail("the session is still listed on a")
        goes_on(out, out.stat().st_size, "on b after the cut link")
    left = stale(run_id)
    if left:
        fail(f"left behind: {left}")


def case_address_in_use(run: Run) -> None:
    sys.path.insert(0, str(HERE.parent))
    from cluster import Cluster, stale  # noqa: E402  (tests/cluster.py)

    with Cluster(["a", "b"], stasis=run.stasis) as c:
        run_id = c.run_id
        a, b = c.nodes["a"], c.nodes["b"]
        addr = c.session_address(12)
        out = node_session(run, a, addr, "--mib", "16")
        b.run(
            [
                "stasis",
                "run",
                "-d",
                "--name",
                "squatter",
                "--net=isolated",
                "--address",
                addr,
                "--",
                "sleep",
                "600",
            ]
        )
        recv = node_receiver(run, b, "--insecure")
        r = a.run(
            [
                "stasis",
                "migrate",
                "--session",
                "web",
                "--to",
                f"{b.address}:7700",
                "--insecure",
            ],
            check=False,
        )
        print(r.stderr, flush=True)
        if r.returncode == 0 or "already in use on this node" not in r.stderr:
            fail(f"expected a refusal naming the address in use: {r.stderr}")
        recv.wait(timeout=30)
        if "web" not in a.run(["stasis", "ps"]).stdout:
            fail("the session does not run on a any more")
        goes_on(out, out.stat().st_size, "on a after a refused migration")
    left = stale(run_id)
    if left:
        fail(f"left behind: {left}")


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", required=True)
    ap.add_argument("case", choices=sorted(CASES))
    a = ap.parse_args()
    run = Run(os.path.abspath(a.stasis))
    try:
        CASES[a.case](run)
    finally:
        run.cleanup()
    print(f"PASS: {a.case}")


if __name__ == "__main__":
    main()
