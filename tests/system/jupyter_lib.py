"""A real Jupyter session driven the way a browser and JupyterHub drive it,
for the system tests, the benchmark and the demo.

JupyterSession starts Debian's jupyter-server as an unprivileged user inside
a `stasis run` session, talks to its REST API, and dumps and restores it by
name. KernelSocket and TerminalSocket are websocket clients that stay open
across dump and restore, as a browser tab does. ClusterJupyterSession runs it
on a node of tests/cluster.py's emulated machines, its clients on the
cluster's client namespace, and moves it to another node (stasis migrate).
"""
import contextlib
import ctypes
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid

import websocket  # Debian's python3-websocket

TOKEN = "stasis-test-token"
CLONE_NEWNET = 0x40000000


class Failure(Exception):
    pass


def free_port(host="127.0.0.1"):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def jupyter_installed():
    return all(shutil.which(p, path="/usr/bin") for p in ("jupyter-server", "setpriv"))


def tree_pids(root):
    """root and its descendants, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class JupyterSession:
    """jupyter-server as `user`, in a `stasis run` session named `name`."""

    def __init__(self, stasis, work, name, user="nobody", address=None):
        """address: None runs the server in the host's network on a free
        loopback port; "A.B.C.D/P" gives the session its own network
        (`stasis run --net=isolated`) on a bridge of the test's own, which
        kill() removes; clients reach it from the host through the bridge."""
        self.stasis, self.work, self.name = stasis, work, name
        self.state = os.path.join(work, "state")
        self.home = os.path.join(work, "home")
        self.user = pwd.getpwnam(user)
        self.log = os.path.join(work, "server.log")
        self.bridge = None
        if address is None:
            self.host, self.port, self.run_args = "127.0.0.1", free_port(), []
        else:
            self.bridge = f"stj{os.getpid() % 1000000}"
            self.host, self.port = address.split("/")[0], 8888
            self.run_args = ["--net=isolated", "--address", address, "--bridge", self.bridge]

    # --- life cycle -------------------------------------------------------

    def start(self):
        os.makedirs(self.home, exist_ok=True)
        os.chown(self.home, self.user.pw_uid, self.user.pw_gid)
        env = {"HOME": self.home, "PATH": "/usr/bin:/bin", "SHELL": "/bin/bash", "LANG": "C.UTF-8",
               "JUPYTER_RUNTIME_DIR": self.runtime_dir, "TERM": "xterm"}
        server = ["/usr/bin/jupyter-server", f"--ServerApp.ip={self.host}", f"--port={self.port}",
                  f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={self.home}", "--no-browser",
                  "--ServerApp.port_retries=0"]
        as_user = ["/usr/bin/setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
                   "--clear-groups", "--"]
        with open(self.log, "w") as log:
            self._launch([self.stasis, "run", "-d", "--name", self.name, "--state-dir", self.state,
                          *self.run_args, "--", *as_user, *server], env, log)
        self.wait_ready()

    def _launch(self, argv, env, log):
        subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                       env=env, check=True, close_fds=True)

    @property
    def isolated(self):
        """The session has its own network (its kernels' ports are on its
        own loopback)."""
        return self.bridge is not None

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while True:
            try:
                return self.api("/api/status")
            except OSError:
                if time.time() > deadline:
                    raise Failure("jupyter-server did not answer:\n" + self.log_tail())
                time.sleep(0.3)

    def log_tail(self):
        try:
            return open(self.log, errors="replace").read()[-3000:]
        except OSError:
            return ""

    @property
    def runtime_dir(self):
        return os.path.join(self.home, "runtime")

    def init_pid(self):
        path = os.path.join(self.state, f"{self.name}.json")
        return json.load(open(path))["init_pid"]

    def pids(self):
        return tree_pids(self.init_pid())

    def rss_kib(self):
        return rss_kib(self.pids())

    def dump(self, images, *extra):
        return self._stasis("dump", "--session", self.name, "--state-dir", self.state, "-D", images,
                            *extra)

    def restore(self, images, *extra):
        return self._stasis("restore", "-D", images, "--state-dir", self.state, *extra)

    def _stasis(self, *argv):
        t0 = time.monotonic()
        r = subprocess.run([self.stasis, *argv], capture_output=True, text=True, timeout=300)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            raise Failure(f"stasis {argv[0]} failed ({r.returncode}):\n{r.stderr}")
        return wall, r.stderr.strip()

    def kill(self):
        """Kills every session under our state dir (cleanup, also after a failure)."""
        for f in os.listdir(self.state) if os.path.isdir(self.state) else []:
            if f.endswith(".json"):
                try:
                    os.kill(json.load(open(os.path.join(self.state, f)))["init_pid"], 9)
                except (OSError, ValueError, KeyError):
                    pass
        time.sleep(0.3)
        subprocess.run([self.stasis, "ps", "--state-dir", self.state], capture_output=True)
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    # --- REST -------------------------------------------------------------

    def url(self, path, scheme="http"):
        return f"{scheme}://{self.host}:{self.port}{path}"

    def api(self, path, method="GET", body=None):
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.url(path), method=method, data=data,
                                     headers={"Authorization": f"token {TOKEN}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def start_kernel(self):
        kernel = self.api("/api/kernels", "POST", {"name": "python3"})
        return kernel["id"]

    def connection_file(self, kernel_id, timeout=60):
        path = os.path.join(self.runtime_dir, f"kernel-{kernel_id}.json")
        deadline = time.time() + timeout
        while not os.path.exists(path):
            if time.time() > deadline:
                raise Failure(f"no connection file for kernel {kernel_id}")
            time.sleep(0.2)
        return path

    def kernel_socket(self, kernel_id):
        return KernelSocket(self.url(f"/api/kernels/{kernel_id}/channels", "ws"))

    def terminal_socket(self):
        name = self.api("/api/terminals", "POST")["name"]
        return name, TerminalSocket(self.url(f"/terminals/websocket/{name}", "ws"))


def open_ws(url):
    return websocket.create_connection(url, header=[f"Authorization: token {TOKEN}"], timeout=60,
                                       enable_multithread=True)


class KernelSocket:
    """The kernel's websocket as the notebook frontend uses it: execute
    requests out, replies and output streams back."""

    def __init__(self, url):
        self.ws = open_ws(url)
        self.session = uuid.uuid4().hex
        self.streams = []  # (parent msg_id, text) of every stream message seen

    def send_execute(self, code, silent=False):
        msg_id = uuid.uuid4().hex
        msg = {"header": {"msg_id": msg_id, "username": "test", "session": self.session,
                          "msg_type": "execute_request", "version": "5.3"},
               "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
               "content": {"code": code, "silent": silent, "store_history": not silent,
                           "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}
        self.ws.send(json.dumps(msg))
        return msg_id

    def recv(self, timeout):
        self.ws.settimeout(timeout)
        data = self.ws.recv()
        if not data:
            raise Failure("the kernel's websocket was closed")
        msg = json.loads(data)
        if msg.get("msg_type") == "stream":
            self.streams.append((msg["parent_header"].get("msg_id"), msg["content"]["text"]))
        return msg

    def execute(self, code, timeout=120):
        """Runs code; returns its stdout. Raises on an error reply."""
        msg_id = self.send_execute(code)
        deadline = time.time() + timeout
        reply, idle = None, False
        while reply is None or not idle:
            left = deadline - time.time()
            if left <= 0:
                raise Failure(f"no reply to {code!r} in {timeout} s")
            msg = self.recv(left)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "execute_reply":
                reply = msg["content"]
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        if reply["status"] != "ok":
            raise Failure(f"cell {code!r} failed: {reply.get('ename')}: {reply.get('evalue')}")
        return "".join(text for mid, text in self.streams if mid == msg_id).strip()

    def probe(self, running, after=0.5, interval=0.02, timeout=300):
        """Runs empty silent cells one after another, as long as running()
        is true and `after` seconds more; returns when each reply came
        (time.monotonic()). The longest interval between two replies is the
        pause a user at this websocket saw (max_gap)."""
        times, end = [], None
        deadline = time.monotonic() + timeout
        while end is None or time.monotonic() < end:
            if end is None and not running():
                end = time.monotonic() + after
            msg_id = self.send_execute("pass", silent=True)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failure(f"the kernel did not answer for {timeout} s")
                msg = self.recv(left)
                if (msg["parent_header"].get("msg_id") == msg_id
                        and msg["msg_type"] == "execute_reply"):
                    break
            times.append(time.monotonic())
            time.sleep(interval)
        return times

    def stream_lines(self, msg_id, count, timeout=60):
        """Waits until msg_id has printed at least count lines; returns them."""
        deadline = time.time() + timeout
        while True:
            lines = "".join(t for mid, t in self.streams if mid == msg_id).splitlines()
            if len(lines) >= count:
                return lines
            left = deadline - time.time()
            if left <= 0:
                raise Failure(f"only {len(lines)} lines of output from a running cell")
            try:
                self.recv(min(left, 1.0))
            except websocket.WebSocketTimeoutException:
                pass

    def close(self):
        self.ws.close()


class TerminalSocket:
    """A terminal's websocket (terminado protocol: ["stdin", text] out,
    ["stdout", text] back)."""

    def __init__(self, url):
        self.ws = open_ws(url)
        self.output = ""

    def type(self, text):
        self.ws.send(json.dumps(["stdin", text]))

    def wait_for(self, needle, timeout=30):
        deadline = time.time() + timeout
        while needle not in self.output:
            left = deadline - time.time()
            if left <= 0:
                raise Failure(f"terminal never showed {needle!r}; it showed:\n{self.output[-1000:]}")
            self.ws.settimeout(left)
            try:
                kind, *rest = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            if kind == "stdout":
                self.output += rest[0]

    def close(self):
        self.ws.close()


def max_gap(times):
    """The longest interval between consecutive times (seconds)."""
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def _setns(fd):
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name):
    """Runs the block with the calling thread in the network namespace
    `name` (/run/netns/NAME, as `ip netns add` makes it), then puts it back.
    Sockets made inside stay in that namespace wherever they are used, so a
    client of an emulated machine (tests/cluster.py) lives in this process.
    (Python 3.11 has no os.setns.)"""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


class ClusterJupyterSession(JupyterSession):
    """jupyter-server in an isolated session (its own address, from the
    session subnet) on a node of a tests/cluster.py Cluster. Its clients
    (REST, websockets) connect from the cluster's client namespace, as a
    browser elsewhere on the network would; migrate() moves it to another
    node while they stay connected."""

    def __init__(self, stasis, work, name, cluster, node, host=8, user="nobody"):
        super().__init__(stasis, work, name, user=user)
        self.cluster, self.node = cluster, node
        address = cluster.session_address(host)
        self.host, self.port = address.split("/")[0], 8888
        self.run_args = ["--net=isolated", "--address", address]
        self.state = node.state_dir

    @property
    def isolated(self):
        return True

    def _launch(self, argv, env, log):
        # The node's Stasis variables and the run's mark (the cluster's
        # tear-down finds the session by it), and nothing else of ours.
        node_env = {k: v for k, v in self.node.env().items() if k.startswith("STASIS")}
        r = self.node.run(argv, env={**node_env, **env}, stdout=log, stderr=subprocess.STDOUT,
                          check=False, close_fds=True)
        if r.returncode != 0:
            raise Failure(f"stasis run on node {self.node.name} failed ({r.returncode}):\n"
                          + self.log_tail())

    def _stasis(self, *argv):
        t0 = time.monotonic()
        r = self.node.run([self.stasis, *argv], check=False, timeout=300)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            raise Failure(f"stasis {argv[0]} on node {self.node.name} failed ({r.returncode}):\n"
                          f"{r.stderr}")
        return wall, r.stderr.strip()

    def api(self, path, method="GET", body=None):
        with in_netns(self.cluster.client.netns):
            return super().api(path, method, body)

    def kernel_socket(self, kernel_id):
        with in_netns(self.cluster.client.netns):
            return super().kernel_socket(kernel_id)

    def terminal_socket(self):
        with in_netns(self.cluster.client.netns):
            return super().terminal_socket()

    def migrate(self, dst, token_file, probe=None, port=7700, extra=()):
        """Moves the session from its node to `dst`: `stasis receive --once`
        there, `stasis migrate --session` here. With probe (a KernelSocket),
        runs empty cells through it all along (KernelSocket.probe). Returns
        {"summary": migrate's JSON, "received": receive's JSON, "stderr":
        migrate's summary line, "gap_s": the longest pause between two probe
        replies}."""
        src = self.node
        files = {k: os.path.join(self.work, f"{k}-{src.name}-{dst.name}")
                 for k in ("recv.out", "recv.err", "migrate.out", "migrate.err")}
        with open(files["recv.out"], "w") as out, open(files["recv.err"], "w") as err:
            recv = dst.popen([self.stasis, "receive", "--listen", f"{dst.address}:{port}", "--once",
                              "--json", "--token-file", token_file], stdout=out, stderr=err)
        try:
            deadline = time.time() + 30
            while "receiving on" not in _read(files["recv.err"]):
                if recv.poll() is not None or time.time() > deadline:
                    raise Failure(f"stasis receive on {dst.name}: {_read(files['recv.err'])}")
                time.sleep(0.05)
            with open(files["migrate.out"], "w") as out, open(files["migrate.err"], "w") as err:
                mig = src.popen([self.stasis, "migrate", "--session", self.name, "--to",
                                 f"{dst.address}:{port}", "--token-file", token_file, "--json",
                                 *extra], stdout=out, stderr=err)
            try:
                times = probe.probe(lambda: mig.poll() is None) if probe else []
                mig.wait(timeout=300)
            except Failure as e:
                mig.wait(timeout=300)
                recv.wait(timeout=60)
                raise Failure(f"{e}, migrating {self.name} from {src.name} to {dst.name}; "
                              f"migrate exited {mig.returncode}:\n{_read(files['migrate.err'])}\n"
                              f"receive exited {recv.returncode}:\n{_read(files['recv.err'])}")
            finally:
                if mig.poll() is None:
                    mig.kill()
                    mig.wait()
            recv.wait(timeout=60)
        finally:
            if recv.poll() is None:
                recv.kill()
                recv.wait()
        if mig.returncode != 0 or recv.returncode != 0:
            raise Failure(f"migrating {self.name} from {src.name} to {dst.name}: migrate exited "
                          f"{mig.returncode}:\n{_read(files['migrate.err'])}\nreceive exited "
                          f"{recv.returncode}:\n{_read(files['recv.err'])}")
        summary = json.loads(_read(files["migrate.out"]).strip().splitlines()[-1])
        received = json.loads(_read(files["recv.out"]).strip().splitlines()[-1])
        self.node, self.state = dst, dst.state_dir
        self.name = received.get("session") or self.name
        line = next((l for l in _read(files["migrate.err"]).splitlines() if "migrated" in l), "")
        return {"summary": summary, "received": received, "stderr": line,
                "gap_s": max_gap(times)}

    def kill(self):
        """Kills the session on whichever node holds it (cleanup, also after
        a failure); the cluster's tear-down removes the rest."""
        for node in self.cluster.nodes.values():
            state = node.state_dir
            for f in os.listdir(state) if state and os.path.isdir(state) else []:
                if f.endswith(".json"):
                    try:
                        os.kill(json.load(open(os.path.join(state, f)))["init_pid"], 9)
                    except (OSError, ValueError, KeyError):
                        pass


def _read(path):
    try:
        return open(path, errors="replace").read()
    except OSError:
        return ""


def run_with_client(connection_file, code, timeout=60, netns_pid=None):
    """Runs code through a fresh jupyter_client connection (the ZMQ path a
    second frontend uses); returns its stdout. The kernel listens on the
    loopback of its session's network: with netns_pid, the client runs in
    that process's network namespace (nsenter)."""
    if netns_pid is not None:
        r = subprocess.run(["nsenter", "-t", str(netns_pid), "-n", "/usr/bin/python3",
                            os.path.abspath(__file__), connection_file, code],
                           capture_output=True, text=True, timeout=timeout + 30)
        if r.returncode != 0:
            raise Failure(f"jupyter_client in the session's network: {r.stderr[-2000:]}")
        return r.stdout.strip()
    from jupyter_client import BlockingKernelClient
    kc = BlockingKernelClient(connection_file=connection_file)
    kc.load_connection_file()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=30)
        out = []
        reply = kc.execute_interactive(code, timeout=timeout,
                                       output_hook=lambda m: out.append(m["content"].get("text", "")))
        if reply["content"]["status"] != "ok":
            raise Failure(f"cell {code!r}: {reply['content']}")
        return "".join(out).strip()
    finally:
        kc.stop_channels()


if __name__ == "__main__":
    # python3 jupyter_lib.py CONNECTION_FILE CODE: run_with_client, for nsenter.
    import sys
    print(run_with_client(sys.argv[1], sys.argv[2]))
