#!/usr/bin/env python3
"""Several machines on this one: emulated nodes for tests, benchmarks and the demo.

A *node* is a network namespace ``stn-<run>-<node>`` with its own Stasis state
directory and cgroup parent. Every node has a bridge ``stasis0`` (the bridge an
isolated session joins by default) whose port ``uplink`` is a veth to the
fabric namespace ``stn-<run>-fab``, where a bridge ``fab0`` joins every node
and the client namespace ``stn-<run>-cli``. All the nodes' ``stasis0`` and
``fab0`` are thus ONE layer-2 segment: a session's address and MAC are valid on
every node, so it keeps them when it moves, and announces itself (gratuitous
ARP) for the bridges to learn where it is now. docs/cluster.md says why this
shape, what it does not show, and the production recipe next to it.

Addresses (all in 198.18.0.0/15, reserved for benchmarking)::

    198.18.0.N/24     node N (1, 2, ...) on its stasis0; the client is .250
    198.18.64.0/24    sessions (--address 198.18.64.X/24); the client is .250

Each run is its own segment in namespaces of its own, so two runs may use the
same addresses without ever meeting; names of namespaces, cgroups and state
directories carry the run id, so they never collide either.

As a library::

    from cluster import Cluster
    with Cluster(["a", "b"], stasis="build/stasis") as c:
        a, b = c.nodes["a"], c.nodes["b"]
        a.run(["stasis", "run", "-d", "--name", "s", "--net=isolated",
               "--address", c.session_address(7), "--", "sleep", "100"])
        c.client.run(["ping", "-c1", "198.18.64.7"])
    assert not stale(c.run_id)

As a command (prints JSON of what it made; ``down`` removes it)::

    python3 tests/cluster.py up --nodes a,b --run demo [--rate 1gbit] [--stasis B]
    python3 tests/cluster.py exec --run demo --node a [--stasis B] -- stasis ps
    python3 tests/cluster.py down --run demo

Needs root (namespaces, veths, tc, cgroups). Nothing is ever sent outside the
namespaces made here.
"""
import argparse
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

NODE_SUBNET = "198.18.0"
SESSION_SUBNET = "198.18.64"
CLIENT_HOST = 250
FABRIC_BRIDGE = "fab0"
NODE_BRIDGE = "stasis0"  # net/isolated_net.h kDefaultBridge
UPLINK = "uplink"
PREFIX = "stn-"
# In the environment of everything a node or the client runs: the tear-down
# finds those processes by it.
RUN_ENV = "STASIS_CLUSTER_RUN"

_RUN_RE = re.compile(r"^[a-z0-9]{1,12}$")
_NODE_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


class ClusterError(RuntimeError):
    pass


def sh(argv, check=True, **kw):
    """Runs argv, output captured; raises ClusterError naming it on failure."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise ClusterError(f"{' '.join(argv)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def new_run_id():
    """A short id unlikely to be another live run's: pid and time."""
    return f"{os.getpid() % 10000:04d}{int(time.time() * 1000) % 100000:05d}"[-9:]


def cgroup_root():
    """The cgroup2 mount, as Stasis finds it (sys/cgroup.cc): the hybrid
    hierarchy's unified first."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup2":
                mounts.append(fields[4])
    for preferred in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if preferred in mounts:
            return preferred
    return mounts[0] if mounts else None


def _netns_names():
    out = sh(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _tbf(rate):
    """tc arguments for a token bucket at `rate` ("1gbit", "100mbit"): a
    burst of 10 ms of the rate (at least 64 KiB), so the bucket is never
    smaller than one tick's worth of tokens."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", rate.lower())
    if not m:
        raise ClusterError(f"rate {rate!r}: give e.g. 1gbit, 10gbit, 500mbit")
    bits = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    burst = max(int(bits / 8 / 100), 65536)
    return ["tbf", "rate", rate, "burst", str(burst), "latency", "50ms"]


# One ICMP echo request, its reply awaited: exit 0 when it came.
_PING = r"""
import os, socket, struct, sys, time
dst, timeout = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xffff
def checksum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xffff)
    return ~(t + (t >> 16)) & 0xffff
body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"stasis-cluster!!"
s.sendto(body[:2] + struct.pack("!H", checksum(body)) + body[4:], (dst, 0))
deadline = time.time() + timeout
while time.time() < deadline:
    s.settimeout(max(deadline - time.time(), 0.01))
    try:
        data, (src, _) = s.recvfrom(1500)
    except socket.timeout:
        break
    icmp = data[(data[0] & 0xf) * 4:]
    if src == dst and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
        sys.exit(0)
sys.exit(1)
"""


class Host:
    """A namespace of the cluster where commands run (a node or the client)."""

    def __init__(self, name, netns, address, run_id):
        self.name = name
        self.netns = netns
        self.address = address
        self.run_id = run_id

    def env(self):
        env = dict(os.environ)
        env[RUN_ENV] = self.run_id
        return env

    def _argv(self, argv):
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv, check=True, **kw):
        """Runs argv inside the namespace, with env(); stdout and stderr
        captured as text unless given. Raises ClusterError on failure when
        check.

        Captured through files, not pipes: a detached session (stasis run
        -d) inherits them, and a pipe would then never reach its end."""
        kw.setdefault("env", self.env())
        kw.setdefault("stdin", subprocess.DEVNULL)
        if "stdout" in kw or "stderr" in kw or "capture_output" in kw:
            r = subprocess.run(self._argv(argv), **kw)
        else:
            with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
                r = subprocess.run(self._argv(argv), stdout=out, stderr=err, **kw)
                out.seek(0)
                err.seek(0)
                r.stdout, r.stderr = out.read(), err.read()
        if check and r.returncode != 0:
            raise ClusterError(
                f"{self.name}: {' '.join(argv)}: exit {r.returncode}: "
                f"{(r.stderr or '').strip()}"
            )
        return r

    def popen(self, argv, **kw):
        """Starts argv inside the namespace, with env()."""
        kw.setdefault("env", self.env())
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self._argv(argv), **kw)

    def ping(self, address, timeout=2.0):
        """True when `address` answers an ICMP echo from this namespace
        (a raw socket: this machine has no ping command)."""
        r = self.run([sys.executable, "-c", _PING, address, str(timeout)], check=False)
        return r.returncode == 0


class Node(Host):
    """One emulated machine.

    name, netns, address (198.18.0.N, on its stasis0), state_dir (a
    temporary directory, STASIS_STATE_DIR), cgroup_parent
    (stasis-<run>-<node>, STASIS_CGROUP_PARENT), stasis (the binary, also
    put first on PATH as `stasis`).
    """

    def __init__(self, cluster, name, index):
        super().__init__(
            name, f"{PREFIX}{cluster.run_id}-{name}", f"{NODE_SUBNET}.{index}", cluster.run_id
        )
        self.index = index
        self.cluster = cluster
        self.cgroup_parent = f"stasis-{cluster.run_id}-{name}"
        self.state_dir = None
        self.fabric_port = f"n{index}"  # its uplink's other end, in the fabric
        self.stasis = cluster.stasis

    def env(self):
        env = super().env()
        if self.state_dir:
            env["STASIS_STATE_DIR"] = self.state_dir
        env["STASIS_CGROUP_PARENT"] = self.cgroup_parent
        if self.stasis:
            env["PATH"] = os.path.dirname(os.path.abspath(self.stasis)) + ":" + env.get("PATH", "")
        return env

    def set_link(self, up):
        """Cuts (False) or restores (True) the node's link to the fabric,
        both ends, as a pulled cable would."""
        state = "up" if up else "down"
        sh(["ip", "-n", self.netns, "link", "set", UPLINK, state])
        sh(["ip", "-n", self.cluster.fabric_ns, "link", "set", self.fabric_port, state])

    def limit(self, rate):
        """Limits the node's link to `rate` ("1gbit", "10gbit") in both
        directions (tbf on both ends of the uplink); None removes it."""
        for ns, dev in ((self.netns, UPLINK), (self.cluster.fabric_ns, self.fabric_port)):
            if rate is None:
                sh(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
            else:
                sh(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *_tbf(rate)])

    def _argv(self, argv):
        # `ip netns exec` mounts a sysfs of the node's namespace on /sys
        # (what /sys/class/net shows must be the node's links), which hides
        # the cgroup mounts under it: mounted again, where the host has them.
        root = cgroup_root()
        if root == "/sys/fs/cgroup/unified":
            mount = (
                "mount -t tmpfs -o mode=755 stasis-node /sys/fs/cgroup && "
                "mkdir /sys/fs/cgroup/unified && "
                "mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified"
            )
        elif root == "/sys/fs/cgroup":
            mount = "mount -t cgroup2 cgroup2 /sys/fs/cgroup"
        else:
            mount = "true"
        return [
            "ip",
            "netns",
            "exec",
            self.netns,
            "/bin/sh",
            "-c",
            f'{mount} && exec "$@"',
            "node-" + self.name,
            *argv,
        ]

    def describe(self):
        return {
            "name": self.name,
            "netns": self.netns,
            "address": self.address,
            "state_dir": self.state_dir,
            "cgroup_parent": self.cgroup_parent,
            "bridge": NODE_BRIDGE,
            "uplink": UPLINK,
        }


class Cluster:
    """N nodes, the fabric and a client namespace; a context manager.

    __exit__ (and close(), also run at exit of the interpreter) kills every
    process still in a node's namespace or cgroups, removes the cgroups, the
    state directories, the namespaces (with them every link, bridge and nft
    table made inside) and the fabric. Each step goes on when one fails.
    """

    def __init__(self, nodes, run_id=None, stasis=None, rate=None):
        self.run_id = run_id or new_run_id()
        if not _RUN_RE.match(self.run_id):
            raise ClusterError(f"run id {self.run_id!r}: 1 to 12 of [a-z0-9]")
        if len(set(nodes)) != len(nodes) or not nodes:
            raise ClusterError(f"node names {nodes!r}: give distinct names")
        for n in nodes:
            if not _NODE_RE.match(n) or n in ("fab", "cli"):
                raise ClusterError(
                    f"node name {n!r}: 1 to 8 of [a-z0-9], a letter first, " "not fab or cli"
                )
        if len(nodes) > 200:
            raise ClusterError("at most 200 nodes")
        self.stasis = stasis
        self.rate = rate
        self.fabric_ns = f"{PREFIX}{self.run_id}-fab"
        self.nodes = {n: Node(self, n, i + 1) for i, n in enumerate(nodes)}
        self.client = Host(
            "client", f"{PREFIX}{self.run_id}-cli", f"{NODE_SUBNET}.{CLIENT_HOST}", self.run_id
        )
        self.session_subnet = f"{SESSION_SUBNET}.0/24"
        self._up = False
        self._closed = False

    @classmethod
    def attach(cls, run_id, nodes, stasis=None):
        """The cluster `up` made for run_id (from the command line), to use
        from Python; its close() removes it."""
        c = cls(nodes, run_id=run_id, stasis=stasis)
        missing = [h.netns for h in [*c.nodes.values(), c.client] if h.netns not in _netns_names()]
        if missing:
            raise ClusterError(f"run {run_id}: no namespace {', '.join(missing)}")
        tmp = tempfile.gettempdir()
        for node in c.nodes.values():
            # Its place among the run's nodes, from its address (the names
            # given here may be a few of them, in any order).
            out = sh(["ip", "-n", node.netns, "-j", "-4", "addr", "show", NODE_BRIDGE]).stdout
            addrs = [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])]
            if addrs:
                node.address = addrs[0]
                node.index = int(addrs[0].rsplit(".", 1)[1])
                node.fabric_port = f"n{node.index}"
            found = [d for d in os.listdir(tmp) if d.startswith(f"{PREFIX}{run_id}-{node.name}-")]
            node.state_dir = os.path.join(tmp, found[0]) if found else None
        c._up = True
        return c

    # -- addresses --------------------------------------------------------
    @staticmethod
    def session_address(host, prefix=True):
        """The session address with host part `host` (2..249): what
        `stasis run --net=isolated --address` takes."""
        if not 2 <= host < CLIENT_HOST:
            raise ClusterError(f"session host {host}: 2 to {CLIENT_HOST - 1}")
        return f"{SESSION_SUBNET}.{host}" + ("/24" if prefix else "")

    @property
    def client_session_address(self):
        return f"{SESSION_SUBNET}.{CLIENT_HOST}"

    # -- bring-up ---------------------------------------------------------
    def __enter__(self):
        self.up()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def up(self):
        atexit.register(self.close)
        try:
            self._up = True
            self._make_fabric()
            for node in self.nodes.values():
                self._make_node(node)
            self._make_client()
            if self.rate:
                for node in self.nodes.values():
                    node.limit(self.rate)
        except BaseException:
            self.close()
            raise
        return self

    def _make_fabric(self):
        ns = self.fabric_ns
        sh(["ip", "netns", "add", ns])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(["ip", "-n", ns, "link", "add", FABRIC_BRIDGE, "type", "bridge"])
        sh(["ip", "-n", ns, "link", "set", FABRIC_BRIDGE, "up"])

    def _attach(self, ns, inner, fabric_port):
        """A veth from the fabric's bridge into `ns`, named `inner` there."""
        sh(
            [
                "ip",
                "-n",
                self.fabric_ns,
                "link",
                "add",
                fabric_port,
                "type",
                "veth",
                "peer",
                "name",
                inner,
                "netns",
                ns,
            ]
        )
        sh(["ip", "-n", self.fabric_ns, "link", "set", fabric_port, "master", FABRIC_BRIDGE, "up"])

    def _make_node(self, node):
        node.state_dir = tempfile.mkdtemp(prefix=f"{PREFIX}{self.run_id}-{node.name}-")
        os.chmod(node.state_dir, 0o755)
        ns = node.netns
        sh(["ip", "netns", "add", ns])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        # A fixed MAC: a bridge otherwise takes its lowest port's.
        sh(
            [
                "ip",
                "-n",
                ns,
                "link",
                "add",
                NODE_BRIDGE,
                "address",
                f"02:6e:00:00:00:{node.index:02x}",
                "type",
                "bridge",
            ]
        )
        self._attach(ns, UPLINK, node.fabric_port)
        sh(["ip", "-n", ns, "link", "set", UPLINK, "master", NODE_BRIDGE, "up"])
        sh(["ip", "-n", ns, "addr", "add", f"{node.address}/24", "dev", NODE_BRIDGE])
        sh(["ip", "-n", ns, "link", "set", NODE_BRIDGE, "up"])

    def _make_client(self):
        ns = self.client.netns
        sh(["ip", "netns", "add", ns])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        self._attach(ns, "eth0", "cli")
        sh(["ip", "-n", ns, "addr", "add", f"{self.client.address}/24", "dev", "eth0"])
        sh(["ip", "-n", ns, "addr", "add", f"{self.client_session_address}/24", "dev", "eth0"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def describe(self):
        return {
            "run": self.run_id,
            "fabric": {"netns": self.fabric_ns, "bridge": FABRIC_BRIDGE},
            "client": {
                "netns": self.client.netns,
                "address": self.client.address,
                "session_address": self.client_session_address,
            },
            "session_subnet": self.session_subnet,
            "rate": self.rate,
            "nodes": [n.describe() for n in self.nodes.values()],
        }

    # -- tear-down --------------------------------------------------------
    def close(self):
        if self._closed or not self._up:
            return
        self._closed = True
        teardown(self.run_id, [n.state_dir for n in self.nodes.values() if n.state_dir])
        atexit.unregister(self.close)


def _marked_pids(run_id):
    """Processes whose environment carries the run's mark (RUN_ENV): what
    Node.run and popen started, down to a session's tree, wherever it went
    (a namespace of its own, a cgroup or none). A restored tree carries the
    environment it was started with, so the mark too."""
    mark = f"{RUN_ENV}={run_id}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            pass
    return pids


def _kill_and_wait(pids, timeout=5.0):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.time() + timeout
    while time.time() < deadline and any(_running(p) for p in pids):
        time.sleep(0.02)


def _running(pid):
    """Exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_netns_pids(ns):
    out = sh(["ip", "netns", "pids", ns], check=False).stdout
    for pid in out.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _cgroup_pids(path):
    pids = []
    for dirpath, _, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids += [int(p) for p in f.read().split()]
            except OSError:
                pass
    return pids


def _remove_cgroup_tree(path):
    """Kills everything in the cgroup tree at `path`, then removes it,
    deepest first (a cgroup is removed with rmdir once empty)."""
    if not os.path.isdir(path):
        return
    kill = os.path.join(path, "cgroup.kill")
    try:
        with open(kill, "w") as f:
            f.write("1")
    except OSError:
        for pid in _cgroup_pids(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    # A frozen cgroup's processes die only once thawed.
    for dirpath, _, files in os.walk(path):
        if "cgroup.freeze" in files:
            try:
                with open(os.path.join(dirpath, "cgroup.freeze"), "w") as f:
                    f.write("0")
            except OSError:
                pass
    deadline = time.time() + 10
    while True:
        dirs = [d for d, _, _ in os.walk(path)]
        for d in sorted(dirs, key=len, reverse=True):
            try:
                os.rmdir(d)
            except OSError:
                pass
        if not os.path.isdir(path) or time.time() > deadline:
            return
        time.sleep(0.05)


def teardown(run_id, state_dirs=()):
    """Removes what run `run_id` made, whatever is left of it (a crashed
    test, a `down` from the command line): processes, cgroups, namespaces,
    state directories."""
    names = [n for n in _netns_names() if n.startswith(f"{PREFIX}{run_id}-")]
    root = cgroup_root()
    cgroups = []
    if root:
        cgroups = [
            os.path.join(root, d) for d in os.listdir(root) if d.startswith(f"stasis-{run_id}-")
        ]
    # Processes first: those started through the run (its mark), then what
    # is in its namespaces or cgroups without the mark (a program that
    # cleared its environment). A session with its own network lives in a
    # namespace the node made but does not name.
    _kill_and_wait(_marked_pids(run_id))
    for ns in names:
        _kill_netns_pids(ns)
    for cg in cgroups:
        _remove_cgroup_tree(cg)
    for ns in names:
        _kill_netns_pids(ns)
        sh(["ip", "netns", "del", ns], check=False)
    tmp = tempfile.gettempdir()
    dirs = set(state_dirs)
    dirs.update(os.path.join(tmp, d) for d in os.listdir(tmp) if d.startswith(f"{PREFIX}{run_id}-"))
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def stale(run_id):
    """What is left of run `run_id`: namespaces, cgroups, state
    directories, processes still in its cgroups. Empty when all is gone."""
    left = [f"netns {n}" for n in _netns_names() if n.startswith(f"{PREFIX}{run_id}-")]
    left += [f"pid {p} started in the run" for p in _marked_pids(run_id) if _running(p)]
    root = cgroup_root()
    if root:
        for d in os.listdir(root):
            if d.startswith(f"stasis-{run_id}-"):
                path = os.path.join(root, d)
                left.append(f"cgroup {path}")
                left += [f"pid {p} in {path}" for p in _cgroup_pids(path)]
    tmp = tempfile.gettempdir()
    left += [
        f"dir {os.path.join(tmp, d)}" for d in os.listdir(tmp) if d.startswith(f"{PREFIX}{run_id}-")
    ]
    return left


try:
    import pytest
except ImportError:  # the system tests run without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture
    def cluster():
        """Two nodes, a and b, and the client; removed after the test."""
        with Cluster(["a", "b"], stasis=os.environ.get("STASIS")) as c:
            yield c


def main(argv=None):
    ap = argparse.ArgumentParser(description="Emulated machines for Stasis (docs/cluster.md).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="bring up nodes, the fabric and a client; print JSON")
    up.add_argument("--nodes", required=True, help="comma-separated node names, e.g. a,b")
    up.add_argument("--run", required=True, help="run id, 1 to 12 of [a-z0-9]")
    up.add_argument("--rate", help="limit every node's link, e.g. 1gbit")
    up.add_argument("--stasis", help="the stasis binary nodes put first on PATH")
    down = sub.add_parser("down", help="remove everything of a run")
    down.add_argument("--run", required=True)
    st = sub.add_parser("stale", help="list what is left of a run (exit 1 if anything)")
    st.add_argument("--run", required=True)
    ex = sub.add_parser("exec", help="run a command in a node of a run, as Node.run does")
    ex.add_argument("--run", required=True)
    ex.add_argument("--node", required=True)
    ex.add_argument("--stasis", help="the stasis binary to put first on PATH")
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    a = ap.parse_args(argv)
    if a.cmd == "exec":
        cmd = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
        if not cmd:
            raise SystemExit("exec: give the command after --")
        node = Cluster.attach(a.run, [a.node], stasis=a.stasis).nodes[a.node]
        return subprocess.run(node._argv(cmd), env=node.env()).returncode
    if a.cmd == "up":
        c = Cluster(a.nodes.split(","), run_id=a.run, stasis=a.stasis, rate=a.rate)
        c.up()
        # Kept for `down`: the command line's cluster outlives this process.
        atexit.unregister(c.close)
        json.dump(c.describe(), sys.stdout, indent=2)
        print()
        return 0
    if not _RUN_RE.match(a.run):
        raise SystemExit(f"run id {a.run!r}: 1 to 12 of [a-z0-9]")
    if a.cmd == "down":
        teardown(a.run)
        left = stale(a.run)
        if left:
            print("left behind: " + ", ".join(left), file=sys.stderr)
            return 1
        return 0
    left = stale(a.run)
    print(json.dumps(left))
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
