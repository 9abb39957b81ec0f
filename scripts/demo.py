#!/usr/bin/python3
"""The demo: a Jupyter session is checkpointed, killed and restored, then
live-migrated to another machine, while a "browser" (our websocket client)
stays connected to it.

The machines are emulated on this one (tests/cluster.py, docs/cluster.md):
two nodes and a client on one network segment, each a network namespace.
Run as root after scripts/install-deps.sh and scripts/build.sh (setup.sh does
all three). Uses Debian's jupyter-server, run as `nobody` in a stasis session.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "system"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import jupyter_lib as jl  # noqa: E402
from cluster import Cluster, ClusterError, stale  # noqa: E402


def step(text):
    print(f"\n== {text}", flush=True)


def say(text):
    for line in text.splitlines():
        print(f"   {line}", flush=True)


def running(pid):
    """Not gone, and not a zombie waiting for the session's init to reap it."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def show_state(ws, label):
    out = ws.execute("print(f'x = {x}, sum(data) = {data.sum():.6f}, "
                     "ticks of the background thread = {ticks}')")
    say(f"{label}: {out}")
    return out


def summary_line(msg):
    """stasis's own summary line ("dumped ..." / "restored ..."), not what it
    said about the network lock before it."""
    lines = msg.splitlines()
    line = next((l for l in lines if ": dumped " in l or ": restored pid" in l), lines[0])
    return line.split(": ", 1)[-1]


def write_token(work):
    path = os.path.join(work, "token")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(24).hex() + "\n")
    return path


def demo(a, c, work):
    node_a, node_b = c.nodes["a"], c.nodes["b"]
    s = jl.ClusterJupyterSession(a.stasis, work, "demo-jupyter", c, node_a)
    timings = []
    try:
        step("Two machines, emulated on this one: each its own network namespace, one segment")
        say(f"node a at {node_a.address}, node b at {node_b.address}, "
            f"the browser at {c.client.address}")

        step("Starting jupyter-server as user nobody on node a, in a stasis session with its own "
             "network")
        s.start()
        say(f"session 'demo-jupyter' is serving {s.url('/')} (log: {s.log})")

        step("A browser connects: a kernel, and a websocket to it that stays open")
        kernel = s.start_kernel()
        ws = s.kernel_socket(kernel)
        say(f"kernel {kernel[:8]} started through the REST API; websocket open")
        ws.execute("import numpy as np, threading, time\n"
                   "x = 42\n"
                   f"data = np.random.default_rng(7).random({a.mib} * 2**20 // 8)\n"
                   "ticks = 0\n"
                   "def tick():\n"
                   "    global ticks\n"
                   "    while True:\n"
                   "        ticks += 1\n"
                   "        time.sleep(0.1)\n"
                   "threading.Thread(target=tick, daemon=True).start()")
        say(f"cells ran: x = 42, data = {a.mib} MiB of random numbers, a thread counting ticks")
        time.sleep(1)
        show_state(ws, "state before")

        step("Checkpointing the session (it is killed once the image is complete)")
        images = os.path.join(work, "image")
        pids = s.pids()[1:]  # the session's processes, without its init
        wall, msg = s.dump(images)
        timings.append(("checkpoint", f"{wall * 1000:.0f} ms wall clock; {summary_line(msg)}"))
        say(summary_line(msg))
        alive = [p for p in pids if running(p)]
        say(f"the session's {len(pids)} processes: {len(alive)} still running; the websocket is "
            "still open")

        step("Restoring it on node a")
        wall, msg = s.restore(images)
        timings.append(("restore", f"{wall * 1000:.0f} ms wall clock; {summary_line(msg)}"))
        say(summary_line(msg))

        step("The same websocket, never closed, talks to the restored kernel")
        show_state(ws, "state after ")
        say(ws.execute("x += 1\nprint(f'a new cell: x = {x}')"))

        step("Live migration to node b (stasis receive there, stasis migrate here, over TLS), "
             "while the browser keeps running cells")
        on_a = s.pids()
        m = s.migrate(node_b, write_token(work), probe=ws)
        sm = m["summary"]
        say(f"{sm['rounds']} pre-copy round{'s' if sm['rounds'] != 1 else ''} while it ran, {sm['total_bytes'] / 2**20:.0f} MiB sent; "
            f"frozen {sm['frozen_ms']:.0f} ms; the browser's longest wait for a reply: "
            f"{m['gap_s'] * 1000:.0f} ms")
        timings.append(("migration", f"{sm['total_ms']:.0f} ms in all, frozen {sm['frozen_ms']:.0f} "
                        f"ms, gap seen by the websocket client {m['gap_s'] * 1000:.0f} ms"))
        say(f"node b runs it: {'yes' if s.pids() else 'no'}; node a's copy is gone: "
            f"{'yes' if not any(running(p) for p in on_a) else 'no'}")

        step("The same websocket, still open, talks to the kernel on node b")
        show_state(ws, "state on b  ")
        say(ws.execute("x += 1\nprint(f'a new cell: x = {x}')"))
        time.sleep(1)
        show_state(ws, "one second later")

        step("Timings")
        for name, text in timings:
            say(f"{name:>10}: {text}")
        return 0
    except (jl.Failure, ClusterError) as e:
        print(f"demo failed: {e}\n--- server log ---\n{s.log_tail()}", file=sys.stderr)
        return 1
    finally:
        s.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", default=shutil.which("stasis") or os.path.join(HERE, "..", "build", "stasis"))
    ap.add_argument("--mib", type=int, default=256, help="size of the kernel's numpy array")
    a = ap.parse_args()
    a.stasis = os.path.abspath(a.stasis)
    work = tempfile.mkdtemp(prefix="stasis-demo-")
    os.chmod(work, 0o755)
    try:
        with Cluster(["a", "b"], stasis=a.stasis) as c:
            code = demo(a, c, work)
        left = stale(c.run_id)
        if left:
            print(f"demo failed: left behind: {', '.join(left)}", file=sys.stderr)
            return 1
        say("the emulated machines are gone, and everything the demo started with them")
        return code
    except ClusterError as e:
        print(f"demo failed: the emulated machines did not come up: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
