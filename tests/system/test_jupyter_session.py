#!/usr/bin/python3
"""The flagship test: a real Jupyter session survives checkpoint and restore.

jupyter-server runs as `nobody` in a `stasis run` session. Through its REST
API and websockets, as a browser does, the test gives one kernel state (a
variable, a big numpy array, an sqlite3 connection inside a write
transaction, a background thread), sets a second kernel counting in a busy
loop, and runs a job in a terminal. Then, for each cycle, it dumps the
session by name (killing it), restores it, and checks everything through
the SAME websockets, which stay open throughout, and through a fresh
jupyter_client connection. Image size and RSS must not grow from cycle to
cycle. With --leave-running it also dumps the live session and reports how
long it was frozen.
"""
import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jupyter_lib as jl  # noqa: E402

BUSY_STEP = 2_000_000


def log(*args):
    print(*args, flush=True)


class Scenario:
    def __init__(self, session, big_mib, terminal):
        self.s = session
        self.big_mib = big_mib
        self.use_terminal = terminal
        self.busy_lines = []

    # --- building the state -----------------------------------------------

    def build(self):
        s = self.s
        self.kernel = s.start_kernel()
        self.busy_kernel = s.start_kernel()
        self.cf = s.connection_file(self.kernel)
        self.ws = s.kernel_socket(self.kernel)
        self.ws.execute("import os, time, threading, sqlite3, numpy as np\nx = 42\n")
        self.ws.execute(f"big = np.arange({self.big_mib} * 2**20 // 8, dtype=np.float64)\n"
                        "big_sum = float(big.sum())")
        self.db_path = os.path.join(s.home, "state.sqlite")
        self.ws.execute(f"db = sqlite3.connect({self.db_path!r}, isolation_level=None)\n"
                        "db.execute('create table t (k integer, v text)')\n"
                        "db.execute(\"insert into t values (1, 'committed')\")\n"
                        "db.execute('begin immediate')\n"
                        "db.execute(\"insert into t values (2, 'pending')\")")
        self.ws.execute("ticks = 0\n"
                        "def tick():\n"
                        "    global ticks\n"
                        "    while True:\n"
                        "        ticks += 1\n"
                        "        time.sleep(0.01)\n"
                        "threading.Thread(target=tick, daemon=True, name='ticker').start()")
        self.facts = self.ws.execute("print(os.getpid(), big_sum)")
        log(f"kernel {self.kernel[:8]}: pid, sum of its {self.big_mib} MiB array = {self.facts}")

        self.busy = s.kernel_socket(self.busy_kernel)
        self.busy_id = self.busy.send_execute(
            f"n = 0\nwhile True:\n    n += 1\n    if n % {BUSY_STEP} == 0:\n        print(n, flush=True)")
        self.busy_lines = self.busy.stream_lines(self.busy_id, 2)
        log(f"busy kernel {self.busy_kernel[:8]}: counting, at {self.busy_lines[-1]}")

        if self.use_terminal:
            self.term_name, self.term = s.terminal_socket()
            self.term.type("cd ~ && bash -c 'n=0; while :; do n=$((n+1)); echo $n > term-count; "
                           "sleep 0.1; done'\r")
            self.wait_term_count(1)
            log(f"terminal {self.term_name}: a job counting in the foreground, at {self.term_count()}")
        self.check_db_locked()

    def term_count(self):
        try:
            return int(open(os.path.join(self.s.home, "term-count")).read() or 0)
        except (OSError, ValueError):
            return 0

    def wait_term_count(self, above, timeout=20):
        deadline = time.time() + timeout
        while self.term_count() <= above:
            if time.time() > deadline:
                raise jl.Failure(f"the terminal's job stopped counting at {self.term_count()}")
            time.sleep(0.05)

    def check_db_locked(self):
        """The kernel's open write transaction still holds sqlite's locks."""
        other = sqlite3.connect(self.db_path, timeout=0, isolation_level=None)
        try:
            other.execute("begin immediate")
        except sqlite3.OperationalError as e:
            if "locked" not in str(e):
                raise
        else:
            raise jl.Failure("another connection could take the write lock the kernel holds")
        finally:
            other.close()

    # --- checking it ------------------------------------------------------

    def check(self, cycle):
        facts = self.ws.execute("print(os.getpid(), big_sum)")
        if facts != self.facts:
            raise jl.Failure(f"kernel state changed: {self.facts!r} -> {facts!r}")
        if self.ws.execute("print(float(big.sum()) == big_sum, all(big[i] == i for i in range(0, len(big), 99991)))") != "True True":
            raise jl.Failure("the numpy array's contents changed")
        t1 = int(self.ws.execute("print(ticks)"))
        time.sleep(0.3)
        t2 = int(self.ws.execute("print(ticks)"))
        if t2 <= t1:
            raise jl.Failure(f"the background thread stopped ({t1} -> {t2})")
        if self.ws.execute("x += 1; print(x)") != str(43 + cycle):
            raise jl.Failure("a new cell did not run on the kernel's state")
        self.check_db_locked()
        self.check_busy()
        if self.use_terminal:
            before = self.term_count()
            self.wait_term_count(before + 2)
        if self.s.api(f"/api/kernels/{self.kernel}")["id"] != self.kernel:
            raise jl.Failure("the server lost its kernel")

    def check_busy(self):
        """The busy kernel printed multiples of BUSY_STEP, one each, in order,
        never starting over, and it is still counting."""
        seen = len(self.busy_lines)
        lines = self.busy.stream_lines(self.busy_id, seen + 2)
        numbers = [int(v) for v in lines]
        expected = [BUSY_STEP * (i + 1) for i in range(len(numbers))]
        if numbers != expected:
            raise jl.Failure(f"the busy kernel's count broke: {numbers[max(0, seen - 3):seen + 3]}")
        self.busy_lines = lines

    def finish(self):
        """Interrupts the terminal's job with ^C (the pty's foreground group)
        and the busy kernel (SIGINT from the server), then commits the
        transaction; checks each effect."""
        if self.use_terminal:
            self.term.type("\x03")
            self.term.type("echo done-$((6*7))\r")
            self.term.wait_for("done-42")
        self.s.api(f"/api/kernels/{self.busy_kernel}/interrupt", "POST")
        deadline = time.time() + 30
        while self.busy.recv(30).get("msg_type") != "execute_reply":
            if time.time() > deadline:
                raise jl.Failure("the busy kernel did not stop on interrupt")
        self.ws.execute("db.execute(\"insert into t values (3, 'after')\")\ndb.execute('commit')")
        rows = sqlite3.connect(self.db_path).execute("select k, v from t order by k").fetchall()
        if rows != [(1, "committed"), (2, "pending"), (3, "after")]:
            raise jl.Failure(f"sqlite rows after commit: {rows}")
        out = jl.run_with_client(self.cf, "print(x, big_sum)",
                                 netns_pid=self.s.pids()[0] if self.s.isolated else None)
        if out != f"{42 + self.cycles_done} {self.facts.split()[1]}":
            raise jl.Failure(f"a fresh jupyter_client saw {out!r}")
        log(f"fresh jupyter_client connection: x, big_sum = {out}")


def image_mib(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2**20


def run(a, work):
    s = jl.JupyterSession(a.stasis, work, f"jup-{os.getpid()}", address=a.address)
    sc = Scenario(s, a.big_mib, a.terminal)
    try:
        s.start()
        sc.build()
        sc.cycles_done = 0
        rows = []
        for cycle in range(a.cycles):
            images = os.path.join(work, "img")
            shutil.rmtree(images, ignore_errors=True)
            rss_before = s.rss_kib() / 1024
            dump_s, dump_msg = s.dump(images)
            size = image_mib(images)
            restore_s, _ = s.restore(images)
            sc.check(cycle)
            sc.cycles_done += 1
            rss_after = s.rss_kib() / 1024
            rows.append((size, rss_after))
            log(f"cycle {cycle + 1}: dump {dump_s * 1000:.0f} ms ({dump_msg}), "
                f"restore {restore_s * 1000:.0f} ms, image {size:.1f} MiB, "
                f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB; state, thread, sqlite lock, busy "
                f"count ({sc.busy_lines[-1]}), terminal ({sc.term_count() if a.terminal else '-'}) ok")
        check_stable(rows)
        if a.leave_running:
            leave_running(s, sc, work)
        sc.finish()
        log("1 passed, 0 failed")
        return 0
    except jl.Failure as e:
        log(f"FAIL: {e}\n--- server log ---\n{s.log_tail()}")
        return 1
    finally:
        s.kill()


def check_stable(rows):
    """Image size and RSS may not grow from cycle to cycle: each cycle is
    compared with the first (a little slack for the kernels' own allocations,
    e.g. the history each cell adds)."""
    if len(rows) < 2:
        return
    size0, rss0 = rows[0]
    for i, (size, rss) in enumerate(rows[1:], 2):
        if size > size0 * 1.02 + 2 or rss > rss0 * 1.05 + 8:
            raise jl.Failure(f"cycle {i} grew: image {size0:.1f} -> {size:.1f} MiB, "
                             f"RSS {rss0:.0f} -> {rss:.0f} MiB")
    log(f"stable over {len(rows)} cycles: image {min(r[0] for r in rows):.1f}-"
        f"{max(r[0] for r in rows):.1f} MiB, RSS {min(r[1] for r in rows):.0f}-"
        f"{max(r[1] for r in rows):.0f} MiB")


def leave_running(s, sc, work):
    images = os.path.join(work, "img-live")
    wall, msg = s.dump(images, "--leave-running")
    log(f"dump --leave-running: {wall * 1000:.0f} ms wall ({msg}); the session goes on")
    sc.check(sc.cycles_done)
    sc.cycles_done += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", required=True)
    ap.add_argument("--cycles", type=int, default=1)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--terminal", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--leave-running", action="store_true")
    ap.add_argument("--address", help="run the session with --net=isolated at ADDR/PREFIX (from "
                    "198.18.0.0/15), on a bridge of the test's own; the test reaches it from the host")
    a = ap.parse_args()
    if not jl.jupyter_installed():
        log("jupyter-server is not installed (scripts/install-deps.sh installs it)")
        return 77
    work = tempfile.mkdtemp(prefix="stasis-jupyter-")
    os.chmod(work, 0o755)
    try:
        return run(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
