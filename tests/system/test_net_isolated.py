#!/usr/bin/env python3
"""An isolated session (`stasis run --net=isolated`) with an echo server,
and a client on another test "host" (a network namespace on the same
bridge), streaming numbered words across dump and restore.

Checks: every word echoed once, in order, no reset (prints the longest
stall); the session's neighbour cache (the client's, the gateway's, a
PERMANENT and an IPv6 router's entry) survives the network lock and is
back after each restore (the image carries it); the listener comes back on the same address; loopback inside the
session works, over a connection made before the dump and a new one; ps
shows the address; a restore while the original still runs fails cleanly
(address in use) and leaves it running; a dump with --leave-running lifts
the lock; the session's link goes with the session; the namespace, veth
and bridge the test made are removed at the end, also on failure.
All addresses are from 198.18.0.0/15 and no packet leaves the test's
bridge.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import tcp_lib

SERVER = r"""
import socket, sys, threading
PORT = 7000
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", PORT))
l.listen(8)
# Loopback inside the session: a listener only LOOP requests accept on, and
# a connection to it made before any dump.
l2 = socket.socket()
l2.bind(("127.0.0.1", PORT + 1))
l2.listen(8)
a = socket.create_connection(("127.0.0.1", PORT + 1))
b, _ = l2.accept()
lock = threading.Lock()

def loop_check():
    with lock:
        a.sendall(b"ping-old")
        old = b.recv(64) == b"ping-old"
        c = socket.create_connection(("127.0.0.1", PORT + 1))
        d, _ = l2.accept()
        c.sendall(b"ping-new")
        new = d.recv(64) == b"ping-new"
        c.close(); d.close()
    return old and new

def serve(conn):
    f = conn.makefile("rb")
    first = f.readline()
    if first == b"LOOP\n":
        conn.sendall(b"LOOP ok\n" if loop_check() else b"LOOP bad\n")
        conn.close()
        return
    conn.sendall(first)
    while True:
        line = f.readline()
        if not line:
            break
        conn.sendall(line)

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

LOOP = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 7000), timeout=10)
s.sendall(b"LOOP\n")
print(s.makefile("rb").readline().decode().strip())
"""


def fail(msg):
    raise SystemExit("FAIL: " + msg)


def sh(*args, check=True):
    # Through files, not pipes: a detached session's command inherits them.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        r = subprocess.run(list(args), stdout=out, stderr=err, text=True, stdin=subprocess.DEVNULL,
                           close_fds=True)
        out.seek(0)
        err.seek(0)
        r.stdout, r.stderr = out.read(), err.read()
    if check and r.returncode != 0:
        fail(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


def link_exists(name):
    return sh("ip", "link", "show", name, check=False).returncode == 0


class Net:
    """The test's bridge and client host, removed again by close()."""

    def __init__(self, tag, subnet):
        self.bridge = f"sttbr{tag}"
        self.ns = f"stasis-test-cli-{tag}"
        self.veth = f"sttc{tag}"
        self.subnet = subnet
        self.client_addr = f"{subnet}.3"
        self.gateway = f"{subnet}.1"  # stasis gives the bridge it makes the first host

    def attach_client(self):
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("ip", "link", "set", self.veth, "master", self.bridge, "up")
        sh("ip", "-n", self.ns, "addr", "add", f"{self.client_addr}/24", "dev", "eth0")
        sh("ip", "-n", self.ns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")

    def client_mac(self):
        link = json.loads(sh("ip", "-n", self.ns, "-j", "link", "show", "eth0").stdout)
        return link[0]["address"]

    def bridge_mac(self):
        return json.loads(sh("ip", "-j", "link", "show", self.bridge).stdout)[0]["address"]

    def run_in_client(self, code, *args, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.ns, "/usr/bin/python3", "-c", code,
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, close_fds=True, **kw)

    def close(self):
        sh("ip", "link", "del", self.veth, check=False)
        sh("ip", "netns", "del", self.ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)


class Stasis:
    def __init__(self, binary, state_dir):
        self.binary, self.state_dir = binary, state_dir

    def __call__(self, cmd, *args, check=True):
        return sh(self.binary, cmd, "--state-dir", self.state_dir, *args, check=check)

    def ps(self):
        return {s["name"]: s for s in json.loads(self("ps", "--json").stdout)}


def loop_check(net, addr):
    p = net.run_in_client(LOOP, addr)
    out, err = p.communicate(timeout=30)
    if out.strip() != "LOOP ok":
        fail(f"loopback check in the session: {out.strip()} {err.strip()}")


def wait_for(pred, what, timeout=10):
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            fail(what)
        time.sleep(0.05)


def scenario(a, net, st, work):
    name = "netiso"
    addr = f"{net.subnet}.2"
    server = os.path.join(work, "server.py")
    with open(server, "w") as f:
        f.write(SERVER)
    os.chmod(server, 0o644)
    # The server runs as nobody, as a JupyterHub spawner would run it.
    st("run", "-d", "--name", name, "--net=isolated", "--address", f"{addr}/24", "--bridge",
       net.bridge, "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
       "/usr/bin/python3", server)
    info = st.ps()[name]
    if info.get("address") != f"{addr}/24":
        fail(f"ps shows address {info.get('address')!r}")
    host_link = "st" + "".join(f"{int(x):02x}" for x in addr.split("."))
    if not link_exists(host_link):
        fail(f"no host link {host_link}")
    net.attach_client()

    client = net.run_in_client(CLIENT, addr, str(a.words), "0.01", tcp_lib.HERE)
    if client.stdout.readline().strip() != "connected":
        fail("client did not connect: " + client.stderr.read())
    time.sleep(0.8)
    loop_check(net, addr)
    seed_session_neighbours(net, info)

    # A dump that leaves the session running lifts its lock again, and a
    # restore of it while the original runs is refused: its address is taken.
    img0 = os.path.join(work, "img0")
    st("dump", "--session", name, "-D", img0, "--leave-running")
    check_session_neighbours(net, info, "after a dump with --leave-running")
    r = st("restore", "-D", img0, "--name", name + "-copy", check=False)
    if r.returncode == 0 or "in use" not in r.stderr:
        fail(f"restore while the original runs: rc {r.returncode}: {r.stderr.strip()}")
    if name + "-copy" in st.ps():
        fail("the refused restore registered a session")
    if not st.ps()[name]["state"] == "running":
        fail("the original session stopped")
    time.sleep(0.5)
    full_cycle(a, net, st, work, name, addr, host_link, client)


def dump_restore(net, st, work, name, addr, host_link, cycle):
    img = os.path.join(work, f"img{cycle}")
    t0 = time.monotonic()
    st("dump", "--session", name, "-D", img)
    dumped = time.monotonic()
    if link_exists(host_link):
        fail("the session link is still there after the dump")
    if cycle == 1:
        # A restore that fails once the network is built (here: at the
        # session's registration, a bad name) removes it again.
        r = st("restore", "-D", img, "--name", "bad/name", check=False)
        if r.returncode == 0:
            fail("a restore with a bad session name succeeded")
        if link_exists(host_link):
            fail("a failed restore left the session link " + host_link)
    time.sleep(0.3)  # the client keeps sending into the lock meanwhile
    t1 = time.monotonic()
    r = st("restore", "-D", img)
    restored = time.monotonic()
    print(f"cycle {cycle}: dump {1000 * (dumped - t0):.0f} ms, restore {1000 * (restored - t1):.0f} ms"
          f" (stasis commands, wall clock); session link down for {1000 * (restored - t0):.0f} ms")
    # The client kept sending while the link was down: the dump's packet
    # keeper sent that into the link once it was up again. (In cycle 1 the
    # failed restore above took it: it had brought the link up.)
    handed = re.search(r"session link \S+: (\d+) packets", r.stderr)
    if cycle > 1 and (not handed or int(handed.group(1)) == 0):
        fail("the restore handed no kept packet to the session: " + r.stderr.strip())
    if handed:
        print(f"  the restore handed {handed.group(1)} packets kept while the link was down")
    info = st.ps()[name]
    if info["state"] != "running" or info.get("address") != f"{addr}/24":
        fail(f"restored session: {info}")
    mac = sh("ip", "-n", net.ns, "neigh", "show", addr, check=False).stdout.strip()
    print("  client's neighbour entry after restore:", mac)
    check_session_neighbours(net, info, "after restore")
    return info


# Entries of the other kinds a session's neighbour cache may hold.
PERMANENT_V4, PERMANENT_MAC = ".50", "02:74:65:73:74:50"
ROUTER_V6, ROUTER_MAC = "fe80::74:50", "02:74:65:73:74:51"


def in_session(info, *cmd):
    return sh("nsenter", f"--net=/proc/{info['init_pid']}/ns/net", *cmd)


def session_neighbour(info, addr):
    out = in_session(info, "ip", "-j", "neigh", "show", addr, "dev", "eth0").stdout
    entries = json.loads(out or "[]")
    return entries[0] if entries else {}


def seed_session_neighbours(net, info):
    """The gateway's entry (a datagram from inside resolves it), a PERMANENT
    one and an IPv6 router's, besides the client's."""
    in_session(info, "/usr/bin/python3", "-c",
               "import socket, sys\n"
               "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', (sys.argv[1], 9))",
               net.gateway)
    wait_for(lambda: session_neighbour(info, net.gateway).get("lladdr"),
             "the session did not resolve its gateway")
    in_session(info, "ip", "neigh", "replace", net.subnet + PERMANENT_V4, "lladdr", PERMANENT_MAC,
               "dev", "eth0", "nud", "permanent")
    in_session(info, "ip", "-6", "neigh", "replace", ROUTER_V6, "lladdr", ROUTER_MAC, "dev", "eth0",
               "nud", "reachable", "router")


def check_session_neighbours(net, info, when):
    """The session knows its peers' MACs: the dump carried its neighbour
    cache and the network lock kept it (else its first packets wait for an
    address resolution whose first request the down link lost)."""
    usable = {"STALE", "DELAY", "PROBE", "REACHABLE"}
    want = [(net.client_addr, net.client_mac(), usable), (net.gateway, net.bridge_mac(), usable),
            (net.subnet + PERMANENT_V4, PERMANENT_MAC, {"PERMANENT"}),
            (ROUTER_V6, ROUTER_MAC, usable)]
    for addr, mac, states in want:
        entry = session_neighbour(info, addr)
        if addr == net.client_addr:
            print(f"  session's neighbour entry for the client {when}:", entry)
        if entry.get("lladdr") != mac or not set(entry.get("state", [])) & states:
            fail(f"{when}, the session's neighbour entry for {addr} is {entry or 'missing'}, "
                 f"not {mac} {'/'.join(sorted(states))}")
        if addr == ROUTER_V6 and "router" not in entry:
            fail(f"{when}, the session's entry for {addr} lost its router flag: {entry}")


def full_cycle(a, net, st, work, name, addr, host_link, client):
    # The second cycle dumps a restored session (its init is a restore's).
    for cycle in range(1, a.cycles + 1):
        info = dump_restore(net, st, work, name, addr, host_link, cycle)
        time.sleep(0.5)

    out, err = client.communicate(timeout=90)
    try:
        res = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        fail(f"client output: {out!r} {err!r}")
    if res["errors"]:
        fail(f"client: {'; '.join(res['errors'])} after {len(res['got'])} words")
    if res["got"] != list(range(a.words)):
        missing = sorted(set(range(a.words)) - set(res["got"]))[:10]
        fail(f"{len(res['got'])} words echoed, out of order or missing (first missing {missing})")
    print(f"{a.words} words echoed once and in order; longest stall {res['stall_ms']:.0f} ms")
    loop_check(net, addr)  # a new connection to the restored listener, loopback inside

    init = info["init_pid"]
    os.kill(init, 9)
    wait_for(lambda: not link_exists(host_link), "the session link outlived the session")
    st("ps")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", required=True)
    ap.add_argument("--words", type=int, default=800)
    ap.add_argument("--cycles", type=int, default=2)
    a = ap.parse_args()
    tag = os.getpid() % 100000
    net = Net(tag, f"198.19.{os.getpid() % 250}")
    work = tempfile.mkdtemp(prefix="stasis-netiso-")
    os.chmod(work, 0o755)
    st = Stasis(a.stasis, os.path.join(work, "state"))
    try:
        scenario(a, net, st, work)
    finally:
        try:
            for s in st.ps().values():
                os.kill(s["init_pid"], 9)
        except (OSError, SystemExit, ValueError):
            pass
        net.close()
        shutil.rmtree(work, ignore_errors=True)
    left = [n for n in (net.bridge, net.veth) if link_exists(n)]
    if left or net.ns in sh("ip", "netns", "list").stdout:
        fail(f"left behind: {left} {net.ns}")
    print("1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
