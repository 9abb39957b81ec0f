#!/usr/bin/python3
"""The flagship Jupyter session, live-migrated between two machines and back
while its websockets stay open.

The session of test_jupyter_session.py (jupyter-server as `nobody` in a
`stasis run --net=isolated` session; a kernel holding a big numpy array, an
sqlite3 write transaction and a counting thread; a second kernel counting
in a busy loop; a terminal running a job) starts on node a of an emulated
cluster (tests/cluster.py, docs/cluster.md). The test's REST calls and
websockets come from the cluster's client namespace, elsewhere on the
network. The session moves a -> b, then b -> a (`stasis receive --once` on
the destination node, `stasis migrate --session` on the source, over TLS
keyed by a token file) while the test runs empty cells through the
kernel's websocket; after each move every piece of state is checked as
test_jupyter_session.py checks it, through the same websockets, open all
along. The frozen time (the source's) and the gap the websocket client saw
(the longest time between two replies) are printed. Nothing of the run is
left at the end.
"""
import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
import jupyter_lib as jl  # noqa: E402
from cluster import Cluster, ClusterError, stale  # noqa: E402  (tests/cluster.py)
from test_jupyter_session import Scenario, log  # noqa: E402


class MigrationScenario(Scenario):
    """test_jupyter_session.py's scenario. Its sqlite write transaction is
    committed before the moves and begun again after them (the kernel's
    connection, an open fd of the kernel, moves and is used after), unless
    sqlite_lock: the destination restores the transaction's POSIX lock while
    the frozen source still holds it on the shared file system (the nodes
    share one), and refuses after 3 s ("another process holds a conflicting
    lock"); the lock can only be taken once the source lets go."""

    def __init__(self, session, big_mib, sqlite_lock):
        super().__init__(session, big_mib, terminal=True)
        self.sqlite_lock = sqlite_lock
        self.holding = True

    def build(self):
        super().build()
        if not self.sqlite_lock:
            self.ws.execute("db.execute('commit')")
            self.holding = False

    def check_db_locked(self):
        if self.holding:
            super().check_db_locked()

    def finish(self):
        if not self.holding:
            self.ws.execute("db.execute('begin immediate')")
            self.holding = True
        super().finish()


def listed(node, name):
    r = node.run([node.stasis, "ps"], check=False)
    return any(line.split()[:1] == [name] for line in r.stdout.splitlines())


def move(s, sc, dst, token, cycle):
    src = s.node
    rss_before = s.rss_kib() / 1024
    m = s.migrate(dst, token, probe=sc.ws)
    sm, rc = m["summary"], m["received"]
    if listed(src, s.name):
        raise jl.Failure(f"the session is still listed on node {src.name} after the move")
    if not listed(dst, s.name):
        raise jl.Failure(f"the session is not listed on node {dst.name} after the move")
    sc.check(cycle)
    sc.cycles_done += 1
    rss_after = s.rss_kib() / 1024
    log(f"{src.name} -> {dst.name}: {m['stderr'].removeprefix('stasis: ')}")
    log(f"{src.name} -> {dst.name}: frozen {sm['frozen_ms']:.0f} ms on the source; the websocket "
        f"client saw a gap of {m['gap_s'] * 1000:.0f} ms; {sm['rounds']} round(s), "
        f"{sm['total_bytes'] / 2**20:.0f} MiB sent; RSS {rss_before:.0f} -> {rss_after:.0f} MiB "
        f"({sm['decision']}); received as {rc['session']} (root pid {rc['root_pid']}); state, "
        f"thread, sqlite{' lock' if sc.holding else ''}, busy count ({sc.busy_lines[-1]}), terminal ({sc.term_count()}) ok")


def run(a, work):
    try:
        c = Cluster(["a", "b"], stasis=a.stasis).up()
    except ClusterError as e:
        log(f"FAIL: the cluster did not come up: {e}")
        return 1
    run_id = c.run_id
    s = jl.ClusterJupyterSession(a.stasis, work, "jupyter", c, c.nodes["a"])
    sc = MigrationScenario(s, a.big_mib, a.sqlite_lock)
    token = os.path.join(work, "token")
    with open(os.open(token, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(24).hex() + "\n")
    try:
        s.start()
        log(f"jupyter-server on node a, at {s.url('/')}, clients in {c.client.netns}")
        sc.build()
        sc.cycles_done = 0
        for cycle, dst in enumerate((c.nodes["b"], c.nodes["a"])):
            move(s, sc, dst, token, cycle)
        sc.finish()
        code = 0
    except (jl.Failure, ClusterError) as e:
        log(f"FAIL: {e}\n--- server log ---\n{s.log_tail()}")
        code = 1
    finally:
        s.kill()
        c.close()
    left = stale(run_id)
    if left:
        log(f"FAIL: left behind: {left}")
        return 1
    if code == 0:
        log("1 passed, 0 failed")
    return code


def available_mib():
    with open("/proc/meminfo") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith("MemAvailable:"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", required=True)
    ap.add_argument("--big-mib", type=int, help="the kernel's array (default 1024, 512 when "
                    "less than 6 GiB is available: a move holds the session about three times)")
    ap.add_argument("--sqlite-lock", action="store_true",
                    help="keep the sqlite write transaction open across the moves")
    a = ap.parse_args()
    a.stasis = os.path.abspath(a.stasis)
    if a.big_mib is None:
        a.big_mib = 1024 if available_mib() >= 6 * 1024 else 512
        if a.big_mib < 1024:
            log(f"only {available_mib()} MiB available: the kernel holds 512 MiB, not 1 GiB")
    if not jl.jupyter_installed():
        log("jupyter-server is not installed (scripts/install-deps.sh installs it)")
        return 77
    work = tempfile.mkdtemp(prefix="stasis-jupyter-migrate-")
    os.chmod(work, 0o755)
    try:
        return run(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
