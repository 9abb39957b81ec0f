#!/usr/bin/python3
"""A real jupyter-server session survives dump and restore (a first step of
the flagship test): the server runs as a `stasis run` session, a kernel is
started through the REST API and given state (a variable, a numpy array);
the session is dumped by name (killed) and restored; a fresh jupyter_client
connection then finds the state and runs new code. Needs Debian's
jupyter-server, python3-ipykernel, python3-jupyter-client, python3-numpy.
"""
import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

TOKEN = "stasis-test-token"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def api(port, path, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 headers={"Authorization": f"token {TOKEN}"}, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def run_cell(connection_file, code):
    from jupyter_client import BlockingKernelClient
    kc = BlockingKernelClient(connection_file=connection_file)
    kc.load_connection_file()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=30)
        out = []
        reply = kc.execute_interactive(code, timeout=60,
                                       output_hook=lambda m: out.append(m["content"].get("text", "")))
        if reply["content"]["status"] != "ok":
            raise SystemExit(f"FAIL: cell {code!r}: {reply['content']}")
        return "".join(out).strip()
    finally:
        kc.stop_channels()


def wait_no_close_wait(connection_file, timeout=20):
    """Our client just disconnected: wait until the kernel has closed its
    ends too. A half-closed (CLOSE_WAIT) connection is refused by the dump
    (not carried yet), and libzmq closes it asynchronously."""
    info = json.load(open(connection_file))
    ports = {info[k] for k in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")}
    deadline = time.time() + timeout
    while time.time() < deadline:
        half_closed = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in open(table).read().splitlines()[1:]:
                f = line.split()
                if f[3] == "08" and int(f[1].split(":")[1], 16) in ports:  # 08: CLOSE_WAIT
                    half_closed += 1
        if half_closed == 0:
            return
        time.sleep(0.1)
    raise SystemExit("FAIL: the kernel kept half-closed connections")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", required=True)
    a = ap.parse_args()
    if not shutil.which("jupyter-server", path="/usr/bin"):
        print("jupyter-server is not installed (scripts/install-deps.sh installs it)")
        return 77
    work = tempfile.mkdtemp(prefix="stasis-jup-")
    state = os.path.join(work, "state")
    name = f"jup-{os.getpid()}"
    env = dict(os.environ, HOME=work, PATH="/usr/bin:/bin:/usr/sbin:/sbin",
               JUPYTER_RUNTIME_DIR=os.path.join(work, "runtime"))
    port = free_port()
    try:
        with open(os.path.join(work, "server.log"), "w") as log:
            subprocess.run([a.stasis, "run", "-d", "--name", name, "--state-dir", state, "--",
                            "/usr/bin/jupyter-server", "--ServerApp.ip=127.0.0.1", f"--port={port}",
                            f"--ServerApp.token={TOKEN}", "--allow-root", f"--ServerApp.root_dir={work}",
                            "--no-browser"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           env=env, check=True, close_fds=True)
        deadline = time.time() + 60
        while True:
            try:
                api(port, "/api/status")
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("FAIL: jupyter-server did not answer:\n" + open(log.name).read()[-2000:])
                time.sleep(0.3)
        kernel = api(port, "/api/kernels", "POST")
        cf = os.path.join(work, "runtime", f"kernel-{kernel['id']}.json")
        deadline = time.time() + 60
        while not os.path.exists(cf):
            if time.time() > deadline:
                raise SystemExit("FAIL: no kernel connection file")
            time.sleep(0.2)
        os.environ.update(HOME=work, JUPYTER_RUNTIME_DIR=os.path.join(work, "runtime"))
        before = run_cell(cf, "import os, numpy as np; x = 42; a = np.arange(10**6); print(os.getpid(), x, a.sum())")
        print("before:", before, flush=True)
        wait_no_close_wait(cf)
        img = os.path.join(work, "img")
        d = subprocess.run([a.stasis, "dump", "--session", name, "--state-dir", state, "-D", img],
                           capture_output=True, text=True)
        print(d.stderr.strip(), flush=True)
        if d.returncode != 0:
            raise SystemExit("FAIL: dump")
        r = subprocess.run([a.stasis, "restore", "-D", img, "--state-dir", state], capture_output=True, text=True)
        print(r.stderr.strip(), flush=True)
        if r.returncode != 0:
            raise SystemExit("FAIL: restore")
        after = run_cell(cf, "print(os.getpid(), x, a.sum())")
        print("after:", after, flush=True)
        if after != before:
            raise SystemExit(f"FAIL: kernel state changed: {before!r} -> {after!r}")
        more = run_cell(cf, "x += 1; print(x)")
        if more != "43":
            raise SystemExit(f"FAIL: new cell printed {more!r}")
        if api(port, f"/api/kernels/{kernel['id']}")["id"] != kernel["id"]:
            raise SystemExit("FAIL: the server lost its kernel")
        print("1 passed, 0 failed")
        return 0
    finally:
        subprocess.run([a.stasis, "ps", "--state-dir", state, "--json"], capture_output=True)
        for path in glob.glob(os.path.join(state, "*.json")):
            try:
                os.kill(json.load(open(path))["init_pid"], 9)
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.5)
        subprocess.run([a.stasis, "ps", "--state-dir", state], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
