#!/usr/bin/python3
"""The demo: a Jupyter session is checkpointed, killed and restored while a
"browser" (our websocket client) stays connected to it.

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
import jupyter_lib as jl  # noqa: E402


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", default=shutil.which("stasis") or os.path.join(HERE, "..", "build", "stasis"))
    ap.add_argument("--mib", type=int, default=256, help="size of the kernel's numpy array")
    ap.add_argument("--address", default="198.18.99.2/24",
                    help="the session's own address (stasis run --net=isolated); 'host' for none")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="stasis-demo-")
    os.chmod(work, 0o755)
    s = jl.JupyterSession(a.stasis, work, "demo-jupyter",
                          address=None if a.address == "host" else a.address)
    timings = []
    try:
        step("Starting jupyter-server as user nobody, in a stasis session with its own network")
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
        timings.append(("checkpoint", wall, msg))
        say(msg)
        alive = [p for p in pids if running(p)]
        say(f"the session's {len(pids)} processes: {len(alive)} still running; the websocket is still open")

        step("Restoring it")
        wall, msg = s.restore(images)
        timings.append(("restore", wall, msg))
        say(msg)

        step("The same websocket, never closed, talks to the restored kernel")
        show_state(ws, "state after ")
        out = ws.execute("x += 1\nprint(f'a new cell: x = {x}')")
        say(out)
        time.sleep(1)
        show_state(ws, "one second later")

        step("Timings")
        for name, wall, msg in timings:
            # stasis's own summary line ("dumped ..." / "restored ..."), not
            # what it said about the network lock before it.
            lines = msg.splitlines()
            summary = next((l for l in lines if ": dumped " in l or ": restored pid" in l), lines[0])
            say(f"{name:>10}: {wall * 1000:.0f} ms wall clock; {summary.split(': ', 1)[-1]}")
        return 0
    except jl.Failure as e:
        print(f"demo failed: {e}\n--- server log ---\n{s.log_tail()}", file=sys.stderr)
        return 1
    finally:
        s.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
