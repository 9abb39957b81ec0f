#!/usr/bin/python3
"""Benchmark: live migration of the 1 GiB Jupyter session between two emulated
machines (tests/cluster.py), against stop-and-copy by Stasis, while a
websocket client keeps executing a tiny cell.

    /usr/bin/python3 bench/migrate.py --stasis build/stasis [--runs 3]
        [--modes idle,busy] [--configs tls-1g,tls-10g,plain-10g,stop-1g,stop-10g]
        [--big-mib 1024] [--busy-mib-s 100] [--json out.json]

For each mode (idle: the kernel holds its array; busy: a thread of the same
kernel rewrites that array at --busy-mib-s) a cluster of two nodes comes up,
jupyter-server runs as `nobody` in an isolated session (--net=isolated) on
node a, and a client in the cluster's client namespace creates a kernel,
gives it a --big-mib numpy array, then loops: execute "1", wait for its
reply, sleep 10 ms, recording when each request left and its reply came.
The session then moves between the nodes, one move per (round, config),
a -> b, b -> a, ... so that every configuration runs in both directions:

  tls-R     stasis migrate --session --token-file (TLS 1.3, PSK) at link rate R
  plain-R   the same with --insecure
  stop-R    stop-and-copy: `stasis dump --session -o -` on the source, its
            stdout a TCP socket to a relay on the destination whose socket is
            `stasis restore -i -`'s stdin; same link rate

R is the rate of both nodes' links (Node.limit: tbf on both ends). For each
move: the wall time of the commands, the bytes sent, pre-copy rounds, the
frozen time on the source, post-copy or not, and the client's gap: the
longest time between two consecutive replies around the move. The two
"machines" share one kernel, CPU and page cache (docs/cluster.md).

Everything the run made is removed by the Cluster context manager, also on
an exception, ^C or SIGTERM.
"""
import argparse
import json
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(HERE, "..", "tests")
sys.path.insert(0, TESTS)
from cluster import Cluster, stale  # noqa: E402

PY = "/usr/bin/python3"
SESSION = "jup"
SESSION_HOST = 20
JUPYTER_PORT = 8888
JUPYTER_TOKEN = "stasis-bench-token"
PING_PAUSE_S = 0.01

# Runs in the client namespace: makes the kernel and its state, then pings
# it through the websocket until STOP exists; appends "sent replied" (host
# CLOCK_MONOTONIC, the same in every namespace) per reply to TIMES.
CLIENT = r"""
import json, os, sys, time, urllib.request, uuid
import websocket
host, port, token, big_mib, busy, times, stop = sys.argv[1:8]
big_mib, busy = int(big_mib), float(busy)
base = "http://%s:%s" % (host, port)
def api(path, method="GET", body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, method=method, data=data,
        headers={"Authorization": "token " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")
deadline = time.time() + 120
while True:
    try:
        api("/api/status"); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.3)
kernel = api("/api/kernels", "POST", {"name": "python3"})["id"]
ws = websocket.create_connection("ws://%s:%s/api/kernels/%s/channels" % (host, port, kernel),
                                 header=["Authorization: token " + token], timeout=120)
session = uuid.uuid4().hex
def execute(code, timeout=300):
    mid = uuid.uuid4().hex
    ws.send(json.dumps({"header": {"msg_id": mid, "username": "bench", "session": session,
        "msg_type": "execute_request", "version": "5.3"}, "parent_header": {}, "metadata": {},
        "channel": "shell", "buffers": [], "content": {"code": code, "silent": False,
        "store_history": False, "user_expressions": {}, "allow_stdin": False,
        "stop_on_error": True}}))
    ws.settimeout(timeout)
    while True:
        m = json.loads(ws.recv())
        if m.get("msg_type") == "execute_reply" and m["parent_header"].get("msg_id") == mid:
            if m["content"]["status"] != "ok":
                raise RuntimeError("%r: %s" % (code, m["content"]))
            return
execute("import os, threading, time, numpy as np\n"
        "big = np.arange(%d * 2**20 // 8, dtype=np.float64)\n" % big_mib)
if busy:
    # Paced by the clock: each pass adds 1.0 to the next 1 MiB of the array
    # until the bytes written reach rate * elapsed; a stall (a freeze) is not
    # caught up afterwards.
    execute("def writer(rate=%r):\n"
            "    chunk = 2**20 // 8\n"
            "    n = len(big) // chunk\n"
            "    i, done, t0 = 0, 0.0, time.monotonic()\n"
            "    while True:\n"
            "        due = (time.monotonic() - t0) * rate\n"
            "        if due - done > rate:\n"
            "            done = due - rate\n"
            "        while done < due:\n"
            "            big[i * chunk:(i + 1) * chunk] += 1.0\n"
            "            i = (i + 1) %% n\n"
            "            done += 1\n"
            "        time.sleep(0.005)\n"
            "threading.Thread(target=writer, daemon=True, name='writer').start()\n" % busy)
out = open(times, "a", buffering=1)
print(json.dumps({"kernel": kernel}), flush=True)
errors = []
while not os.path.exists(stop):
    t0 = time.monotonic()
    try:
        execute("1", timeout=120)
    except Exception as e:
        errors.append(repr(e)); break
    out.write("%.6f %.6f\n" % (t0, time.monotonic()))
    time.sleep(%(pause)r)
print(json.dumps({"errors": errors}), flush=True)
""".replace("%(pause)r", repr(PING_PAUSE_S))

# Runs on the destination node: listens, then gives the accepted socket to
# `stasis restore -i -` as its stdin; prints restore's exit code.
RELAY_IN = r"""
import socket, subprocess, sys
addr, port, stasis = sys.argv[1], int(sys.argv[2]), sys.argv[3]
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((addr, port)); l.listen(1)
print("listening", flush=True)
c, _ = l.accept()
l.close()
r = subprocess.run([stasis, "restore", "-i", "-"], stdin=c.fileno(), capture_output=True, text=True)
sys.stderr.write(r.stderr)
sys.exit(r.returncode)
"""

# Runs on the source node: connects to the relay, then dumps the session
# with the socket as stdout.
RELAY_OUT = r"""
import socket, subprocess, sys
addr, port, stasis, session = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.create_connection((addr, port))
r = subprocess.run([stasis, "dump", "--session", session, "-o", "-"], stdout=s.fileno(),
                   stderr=subprocess.PIPE, text=True)
s.close()
sys.stderr.write(r.stderr)
sys.exit(r.returncode)
"""

CONFIGS = {
    "tls-1g": ("migrate", "1gbit", True),
    "tls-10g": ("migrate", "10gbit", True),
    "plain-1g": ("migrate", "1gbit", False),
    "plain-10g": ("migrate", "10gbit", False),
    "stop-1g": ("stop", "1gbit", False),
    "stop-10g": ("stop", "10gbit", False),
}


class BenchError(RuntimeError):
    pass


def wait_for(pred, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.05)


def replies(path):
    """(sent, replied) of every ping so far."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [tuple(map(float, line.split())) for line in f if line.count(" ") == 1]


def client_gap(path, t_start, t_end):
    """The longest time between two consecutive replies, of those pairs that
    span any part of [t_start, t_end] (the move's commands)."""
    done = sorted(r for _, r in replies(path))
    gaps = [b - a for a, b in zip(done, done[1:]) if b >= t_start and a <= t_end]
    return max(gaps) if gaps else None


def steady_interval(path, t_start):
    """The median time between replies in the second before t_start: what
    the client sees when nothing moves."""
    done = sorted(r for _, r in replies(path) if t_start - 1 <= r < t_start)
    gaps = [b - a for a, b in zip(done, done[1:])]
    return statistics.median(gaps) if gaps else None


class Bench:
    def __init__(self, args, cluster, work):
        self.a = args
        self.c = cluster
        self.work = work
        self.token = os.path.join(work, "token")
        with open(self.token, "w") as f:
            f.write(os.urandom(24).hex() + "\n")
        os.chmod(self.token, 0o600)
        self.times = os.path.join(work, "times")
        self.stop = os.path.join(work, "stop")
        self.moves = 0
        self.client = None

    def start_session(self, node):
        home = os.path.join(self.work, "home")
        os.makedirs(home)
        user = pwd.getpwnam("nobody")
        os.chown(home, user.pw_uid, user.pw_gid)
        env = node.env()
        env.update({"HOME": home, "PATH": "/usr/bin:/bin", "SHELL": "/bin/bash",
                    "LANG": "C.UTF-8", "JUPYTER_RUNTIME_DIR": os.path.join(home, "runtime")})
        host = self.c.session_address(SESSION_HOST, prefix=False)
        server = ["/usr/bin/jupyter-server", f"--ServerApp.ip={host}", f"--port={JUPYTER_PORT}",
                  f"--ServerApp.token={JUPYTER_TOKEN}", f"--ServerApp.root_dir={home}",
                  "--no-browser", "--ServerApp.port_retries=0"]
        as_user = ["/usr/bin/setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                   "--clear-groups", "--"]
        with open(os.path.join(self.work, "server.log"), "w") as log:
            node.run([node.stasis, "run", "-d", "--name", SESSION, "--net=isolated", "--address",
                      self.c.session_address(SESSION_HOST), "--", *as_user, *server],
                     env=env, stdout=log, stderr=subprocess.STDOUT, check=True)

    def start_client(self, busy):
        host = self.c.session_address(SESSION_HOST, prefix=False)
        self.client = self.c.client.popen(
            [PY, "-c", CLIENT, host, str(JUPYTER_PORT), JUPYTER_TOKEN, str(self.a.big_mib),
             str(busy), self.times, self.stop], stdout=subprocess.PIPE, text=True)
        line = self.client.stdout.readline()
        if not line.startswith("{"):
            self.client.wait(timeout=10)
            raise BenchError(f"the websocket client did not start (exit {self.client.returncode})")
        wait_for(lambda: len(replies(self.times)) > 20, "the first replies to the client's pings")

    def stop_client(self):
        open(self.stop, "w").close()
        out, _ = self.client.communicate(timeout=180)
        last = json.loads(out.strip().splitlines()[-1])
        return last["errors"]

    def resident_bytes(self, node):
        """The session tree's resident memory, from its init pid's tree."""
        sys.path.insert(0, os.path.join(TESTS, "system"))
        import jupyter_lib as jl

        with open(os.path.join(node.state_dir, f"{SESSION}.json")) as f:
            init = json.load(f)["init_pid"]
        return jl.rss_kib(jl.tree_pids(init)) * 1024

    def move(self, name, src, dst):
        kind, rate, tls = CONFIGS[name]
        for node in (src, dst):
            node.limit(rate)
        # A steady second of pings first: the gap is measured against it.
        time.sleep(1.5)
        self.moves += 1
        port = 7700 + self.moves
        rss = self.resident_bytes(src)
        t0 = time.monotonic()
        if kind == "migrate":
            row = self.migrate(src, dst, port, tls)
        else:
            row = self.stop_and_copy(src, dst, port)
        t1 = time.monotonic()
        n = len(replies(self.times))
        wait_for(lambda: len(replies(self.times)) > n + 20, "pings to go on after the move", 120)
        if SESSION not in dst.run(["stasis", "ps"]).stdout:
            raise BenchError(f"the session does not run on {dst.name} after the move")
        row.update({"config": name, "from": src.name, "to": dst.name, "rss_bytes": rss,
                    "wall_ms": (t1 - t0) * 1000,
                    "gap_ms": client_gap(self.times, t0, t1) * 1000,
                    "steady_ms": (steady_interval(self.times, t0) or 0) * 1000})
        return row

    def migrate(self, src, dst, port, tls):
        chan = ["--token-file", self.token] if tls else ["--insecure"]
        err = os.path.join(self.work, f"receive{port}.err")
        recv = dst.popen(["stasis", "receive", "--listen", f"{dst.address}:{port}", "--once",
                          "--json", *chan], stdout=subprocess.PIPE,
                         stderr=open(err, "w"), text=True)
        try:
            wait_for(lambda: "receiving on" in open(err).read(), "the receiver to listen")
            r = src.run(["stasis", "migrate", "--session", SESSION, "--to",
                         f"{dst.address}:{port}", "--json", *chan], check=False, timeout=900)
            # A failed migration must end the receiver's at once; give it a
            # little, then take it as the failure it is.
            try:
                out, _ = recv.communicate(timeout=300 if r.returncode == 0 else 30)
            except subprocess.TimeoutExpired:
                raise BenchError(f"migrate {src.name} -> {dst.name} exited {r.returncode}: "
                                 f"{r.stderr}\nthe receiver did not end: {open(err).read()}")
        finally:
            if recv.poll() is None:
                recv.kill()
                recv.wait()
        if r.returncode != 0 or recv.returncode != 0:
            raise BenchError(f"migrate {src.name} -> {dst.name}: {r.stderr}\n{open(err).read()}")
        s = json.loads(r.stdout.strip().splitlines()[-1])
        return {"bytes": s["total_bytes"], "rounds": s["rounds"], "frozen_ms": s["frozen_ms"],
                "postcopy": s["postcopy"], "decision": s["decision"],
                "resident_bytes": s["resident_bytes"], "precopy_ms": s["precopy_ms"],
                "restore_ms": s["restore_ms"], "stasis_total_ms": s["total_ms"],
                "faults": s["faults"], "blocktime_ms": s["blocktime_ms"],
                "log": r.stderr.strip().splitlines() + open(err).read().strip().splitlines()}

    def stop_and_copy(self, src, dst, port):
        relay = dst.popen([PY, "-c", RELAY_IN, dst.address, str(port), dst.stasis],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if relay.stdout.readline().strip() != "listening":
                raise BenchError(f"the relay on {dst.name} did not listen")
            r = src.run([PY, "-c", RELAY_OUT, dst.address, str(port), src.stasis, SESSION],
                        check=False, timeout=900)
            _, restore_err = relay.communicate(timeout=300)
        finally:
            if relay.poll() is None:
                relay.kill()
                relay.wait()
        if r.returncode != 0 or relay.returncode != 0:
            raise BenchError(f"stop-and-copy {src.name} -> {dst.name}: {r.stderr}\n{restore_err}")
        import re

        d = re.search(r"([\d.]+) MiB resident, image ([\d.]+) MiB, ([\d.]+) ms total, "
                      r"frozen ([\d.]+) ms", r.stderr)
        rest = re.search(r"restored pid .* in ([\d.]+) ms", restore_err)
        return {"bytes": int(float(d[2]) * 1048576), "rounds": 0, "frozen_ms": float(d[4]),
                "postcopy": False, "decision": "stop-and-copy",
                "resident_bytes": int(float(d[1]) * 1048576), "dump_ms": float(d[3]),
                "restore_ms": float(rest[1]) if rest else None,
                "log": r.stderr.strip().splitlines() + restore_err.strip().splitlines()}


def run_mode(args, mode, configs, rows):
    """Appends a row per move to rows; a failed move ends the mode (where
    the session is then, and whether it answers, is no longer known) with
    a row saying why."""
    busy = args.busy_mib_s if mode == "busy" else 0
    work = tempfile.mkdtemp(prefix="stasis-bench-mig-")
    os.chmod(work, 0o755)
    try:
        with Cluster(["a", "b"], stasis=args.stasis) as c:
            run_id = c.run_id
            bench = Bench(args, c, work)
            a, b = c.nodes["a"], c.nodes["b"]
            bench.start_session(a)
            bench.start_client(busy)
            print(f"[{mode}] session up on a, kernel holds {args.big_mib} MiB"
                  + (f", writing {busy} MiB/s" if busy else "")
                  + f"; resident {bench.resident_bytes(a) / 2**20:.0f} MiB", flush=True)
            here, there = a, b
            try:
                for rnd in range(args.runs):
                    # Each move flips the direction: with an even number of
                    # configurations, every other round runs them in reverse
                    # so that each one also goes the other way.
                    flip = len(configs) % 2 == 0 and rnd % 2 == 1
                    for name in reversed(configs) if flip else configs:
                        row = bench.move(name, here, there)
                        row.update({"mode": mode, "round": rnd + 1})
                        rows.append(row)
                        print_row(row)
                        here, there = there, here
                errors = bench.stop_client()
                if errors:
                    raise BenchError(f"the websocket client failed: {errors}")
            except BenchError as e:
                rows.append({"mode": mode, "config": name, "round": rnd + 1, "from": here.name,
                             "to": there.name, "error": str(e)})
                print(f"  {mode} {name} {here.name}->{there.name} FAILED: {e}", flush=True)
        left = stale(run_id)
        if left:
            raise BenchError(f"left behind: {left}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_row(r):
    print(f"  {r['mode']:<4} {r['config']:<9} {r['from']}->{r['to']}  gap {r['gap_ms']:7.0f} ms "
          f"(steady {r['steady_ms']:.0f})  "
          f"frozen {r['frozen_ms']:7.0f} ms (restore {r.get('restore_ms') or 0:.0f})  wall {r['wall_ms']:7.0f} ms  "
          f"sent {r['bytes'] / 2**20:7.0f} MiB ({r['bytes'] / r['resident_bytes']:.2f} x resident "
          f"{r['resident_bytes'] / 2**20:.0f} MiB)  rounds {r['rounds']}  "
          f"{'post-copy' if r['postcopy'] else ''} {r['decision']}", flush=True)


def med(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"


def summary(rows):
    print("\nmedians (min–max) per mode and configuration; one kernel, CPU and page cache "
          "for both nodes:")
    print("| mode | config | runs | client gap ms | frozen ms | total ms | sent MiB | "
          "sent / resident | rounds | post-copy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    keys = []
    for r in rows:
        if (r["mode"], r["config"]) not in keys:
            keys.append((r["mode"], r["config"]))
    for mode, config in keys:
        rs = [r for r in rows if r["mode"] == mode and r["config"] == config]
        print(f"| {mode} | {config} | {len(rs)} | {med(r['gap_ms'] for r in rs)} | "
              f"{med(r['frozen_ms'] for r in rs)} | {med(r['wall_ms'] for r in rs)} | "
              f"{med(r['bytes'] / 2**20 for r in rs)} | "
              f"{statistics.median(r['bytes'] / r['resident_bytes'] for r in rs):.2f} | "
              f"{med(r['rounds'] for r in rs)} | {sum(1 for r in rs if r['postcopy'])}/{len(rs)} |")
    for r in failed:
        print(f"failed: {r['mode']} {r['config']} round {r['round']} {r['from']}->{r['to']}: "
              f"{r['error'][:2000]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stasis", default="build/stasis")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modes", default="idle,busy")
    ap.add_argument("--configs", default="tls-1g,tls-10g,plain-10g,stop-1g,stop-10g")
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--busy-mib-s", type=float, default=100)
    ap.add_argument("--json", help="write every move's row here")
    a = ap.parse_args()
    a.stasis = os.path.abspath(a.stasis)
    configs = a.configs.split(",")
    for name in configs:
        if name not in CONFIGS:
            ap.error(f"config {name!r}: one of {', '.join(CONFIGS)}")
    # SIGTERM as ^C: the cluster's __exit__ then removes everything.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"load average at start: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    rows = []
    try:
        for mode in a.modes.split(","):
            run_mode(a, mode, configs, rows)
    except KeyboardInterrupt:
        print("interrupted: the cluster and its sessions are removed", flush=True)
        return 130
    finally:
        if a.json:
            with open(a.json, "w") as f:
                json.dump(rows, f, indent=1)
        if rows:
            summary(rows)
        print(f"load average at end: {open('/proc/loadavg').read().split()[:3]}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
