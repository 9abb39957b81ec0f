#!/usr/bin/env python3
"""Two emulated machines (tests/cluster.py) and a client, end to end.

Checks: the nodes reach each other and the client reaches them (ICMP echo
between node addresses); a node whose link is cut is unreachable until it is
restored, and a link limit is put on and taken off; an isolated session (`stasis run --net=isolated
--address 198.18.64.7/24`) started on node a serves a client on the fabric,
which streams numbered words through it; the session is moved to node b by
stop-and-copy (dump on a, restore on b from the shared file system) while
the client keeps streaming: every word echoed once and in order, no reset,
since the session keeps its address and MAC on the one layer-2 segment; the
restore on b announces the session (three gratuitous ARPs from its MAC, seen
by the client) and the fabric's bridge forwards its MAC to node b; the
session is left running on b, and the cluster's tear-down removes it with
everything else: no namespace, cgroup, state directory or process of the
run is left.
"""
import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import cluster  # noqa: E402  (tests/cluster.py)

SESSION_HOST = 7
SESSION_MAC = "02:53:c6:12:40:07"  # net/isolated_net.cc: 02:53 + the address
PORT = 7000

SERVER = r"""
import socket, threading
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 7000))
l.listen(8)

def serve(conn):
    while True:
        d = conn.recv(65536)
        if not d:
            break
        conn.sendall(d)

while True:
    conn, _ = l.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

CLIENT = r"""
import json, socket, sys, threading, time
addr, words, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sys.path.insert(0, sys.argv[4])
from tcp_lib import read_words
deadline = time.time() + 15
while True:
    try:
        s = socket.create_connection((addr, 7000), timeout=2)
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.1)
s.settimeout(60)
print("connected", flush=True)
got, errors, stall = [], [], [0.0]
t = threading.Thread(target=read_words, args=(s, words, got, errors, stall))
t.start()
try:
    for i in range(words):
        s.sendall(f"word {i}\n".encode())
        time.sleep(pause)
except OSError as e:
    errors.append(f"send: {type(e).__name__}: {e}")
t.join(60)
print(json.dumps({"got": got, "errors": errors, "stall_ms": stall[0] * 1000}), flush=True)
"""

# Prints, as JSON, the sender MAC of every gratuitous ARP for the address
# seen on eth0 within the given seconds (stops at 3).
ARP_SNIFFER = r"""
import json, socket, struct, sys, time
addr, seconds = socket.inet_aton(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0x0806))
print("listening", flush=True)
seen, deadline = [], time.time() + seconds
while len(seen) < 3 and time.time() < deadline:
    s.settimeout(max(deadline - time.time(), 0.01))
    try:
        f = s.recv(1514)
    except socket.timeout:
        break
    op, sha, spa, tha, tpa = struct.unpack("!6xH6s4s6s4s", f[14:42])
    if op == 1 and spa == addr and tpa == addr and f[0:6] == b"\xff" * 6:
        seen.append(":".join(f"{b:02x}" for b in sha))
print(json.dumps(seen), flush=True)
"""


def fail(msg):
    raise SystemExit("FAIL: " + msg)


def stasis(node, *args, check=True):
    r = node.run([node.stasis, *args], check=False)
    if check and r.returncode != 0:
        fail(f"{node.name}: stasis {' '.join(args)}: {r.stderr.strip()}")
    return r


def sessions(node):
    return {s["name"]: s for s in json.loads(stasis(node, "ps", "--json").stdout)}


def check_reachable(c):
    a, b = c.nodes["a"], c.nodes["b"]
    for src, dst in ((a, b), (b, a), (c.client, a), (c.client, b)):
        if not src.ping(dst.address):
            fail(f"{src.name} ({src.address}) does not reach {dst.name} ({dst.address})")
    print("nodes and client reach each other")


def check_link_controls(c):
    """A cut link isolates its node until restored; a limit is a tbf on
    both ends of the uplink, and goes again."""
    b = c.nodes["b"]
    b.set_link(False)
    if c.client.ping(b.address, timeout=0.5):
        fail("node b answers with its link cut")
    b.set_link(True)
    deadline = time.time() + 10
    while not c.client.ping(b.address, timeout=0.5):
        if time.time() > deadline:
            fail("node b does not answer once its link is back")

    def qdiscs():
        return [
            cluster.sh(["tc", "-n", ns, "qdisc", "show", "dev", dev]).stdout
            for ns, dev in ((b.netns, cluster.UPLINK), (c.fabric_ns, b.fabric_port))
        ]

    b.limit("1gbit")
    if not all("tbf" in q and "1Gbit" in q for q in qdiscs()):
        fail(f"limit 1gbit: {qdiscs()}")
    b.limit(None)
    if any("tbf" in q for q in qdiscs()):
        fail(f"limit removed: {qdiscs()}")
    print("a cut link isolates node b until restored; a limit comes and goes")


def start_session(c, work):
    a = c.nodes["a"]
    server = os.path.join(work, "server.py")
    with open(server, "w") as f:
        f.write(SERVER)
    address = c.session_address(SESSION_HOST)
    stasis(
        a,
        "run",
        "-d",
        "--name",
        "web",
        "--net=isolated",
        "--address",
        address,
        "--",
        "/usr/bin/python3",
        server,
    )
    info = sessions(a).get("web")
    if not info or info.get("address") != address:
        fail(f"node a's sessions: {sessions(a)}")
    if "web" in sessions(c.nodes["b"]):
        fail("node b sees node a's session")
    host_link = "st" + "".join(f"{int(x):02x}" for x in address.split("/")[0].split("."))
    link = a.run(["ip", "-j", "link", "show", host_link], check=False)
    if link.returncode != 0 or json.loads(link.stdout)[0].get("master") != cluster.NODE_BRIDGE:
        fail(f"no session link {host_link} on node a's {cluster.NODE_BRIDGE}: {link.stderr}")
    cgroup = os.path.join(cluster.cgroup_root(), a.cgroup_parent, "web")
    if not os.path.isdir(cgroup):
        fail(f"the session's cgroup is not under node a's parent: {info.get('cgroup')}")
    return info


def move(c, work):
    """Stop-and-copy from a to b through the shared file system, while the
    client streams."""
    a, b = c.nodes["a"], c.nodes["b"]
    addr = c.session_address(SESSION_HOST, prefix=False)
    sniffer = c.client.popen(
        ["/usr/bin/python3", "-c", ARP_SNIFFER, addr, "20"],
        stdout=cluster.subprocess.PIPE,
        text=True,
    )
    if sniffer.stdout.readline().strip() != "listening":
        fail("the ARP sniffer did not start")
    image = os.path.join(work, "img")
    t0 = time.monotonic()
    stasis(a, "dump", "--session", "web", "-D", image)
    t1 = time.monotonic()
    time.sleep(0.2)  # the client sends into the void meanwhile
    t2 = time.monotonic()
    r = stasis(b, "restore", "-D", image)
    t3 = time.monotonic()
    print(
        f"moved a -> b: dump {1000 * (t1 - t0):.0f} ms, restore {1000 * (t3 - t2):.0f} ms "
        f"(stasis commands, wall clock; one kernel, one CPU: docs/cluster.md)"
    )
    for line in r.stderr.strip().splitlines():
        print("  restore:", line)
    info = sessions(b).get("web")
    if not info or info["state"] != "running":
        fail(f"node b's sessions after the restore: {sessions(b)}")
    if sessions(a).get("web", {}).get("state") == "running":
        fail("the session still runs on node a")
    seen = json.loads(sniffer.communicate(timeout=30)[0].strip().splitlines()[-1])
    if seen != [SESSION_MAC] * 3:
        fail(f"gratuitous ARPs for {addr} seen by the client: {seen}, not 3 from {SESSION_MAC}")
    print(f"the client saw 3 gratuitous ARPs for {addr} from {SESSION_MAC}")
    fdb = cluster.sh(["bridge", "-n", c.fabric_ns, "fdb", "show", "br", cluster.FABRIC_BRIDGE])
    ports = [line.split()[2] for line in fdb.stdout.splitlines() if line.startswith(SESSION_MAC)]
    if ports != [b.fabric_port]:
        fail(f"the fabric forwards {SESSION_MAC} to {ports}, not node b's {b.fabric_port}")
    return info


def scenario(c, args, work):
    check_reachable(c)
    check_link_controls(c)
    start_session(c, work)
    client = c.client.popen(
        [
            "/usr/bin/python3",
            "-c",
            CLIENT,
            c.session_address(SESSION_HOST, prefix=False),
            str(args.words),
            "0.01",
            HERE,
        ],
        stdout=cluster.subprocess.PIPE,
        stderr=cluster.subprocess.PIPE,
        text=True,
    )
    try:
        if client.stdout.readline().strip() != "connected":
            fail("the client did not connect: " + client.stderr.read())
        time.sleep(1.0)
        info = move(c, work)
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    try:
        res = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        fail(f"client output: {out!r} {err!r}")
    if res["errors"]:
        fail(f"client: {'; '.join(res['errors'])} after {len(res['got'])} words")
    if res["got"] != list(range(args.words)):
        missing = sorted(set(range(args.words)) - set(res["got"]))[:10]
        fail(f"{len(res['got'])} words echoed, out of order or missing (first missing {missing})")
    print(
        f"{args.words} words echoed once and in order across the move; longest stall "
        f"{res['stall_ms']:.0f} ms"
    )
    # Left running on b: the tear-down must remove it.
    return info["init_pid"]


def alive(pid):
    """Running, not a zombie waiting for whoever adopted it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", required=True)
    ap.add_argument("--words", type=int, default=500)
    args = ap.parse_args()
    stasis_bin = os.path.abspath(args.stasis)
    c = cluster.Cluster(["a", "b"], stasis=stasis_bin)
    init_pid = None
    with c:
        work = tempfile.mkdtemp(prefix=f"{cluster.PREFIX}{c.run_id}-work-")
        os.chmod(work, 0o755)
        init_pid = scenario(c, args, work)
    left = cluster.stale(c.run_id)
    if init_pid and alive(init_pid):
        left.append(f"the session's init, pid {init_pid}")
    if left:
        fail("left behind: " + ", ".join(left))
    print("tear-down left nothing (namespaces, cgroups, state directories, processes)")
    print("1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
