"""A batch job for the Slurm tests: numpy state of MIB MiB, one line a second.

    python3 slurm_workload.py --mib 256 --lines 60 [--file PATH] [--unsupported io_uring]

Each line carries its number, a sum over the array (which the job keeps
changing) and the next value of its random generator, so a resumed job that
lost its state, its counter or its RNG state prints something else than an
uninterrupted one would. The same lines go to stdout and, with --file, to a
file the job holds open all along. --unsupported opens an object stasis
refuses to checkpoint (an io_uring, a netlink socket) and holds it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import sys
import time

import numpy as np


STATE: "np.ndarray | None" = None


def chunk_sum(task: tuple[int, int, int]) -> float:
    i, w, n = task
    assert STATE is not None
    part = STATE[w * len(STATE) // n : (w + 1) * len(STATE) // n]
    return float(part[: 1 << 20].sum()) + i


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--lines", type=int, default=60)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--file", default=None)
    p.add_argument(
        "--pool", type=int, default=0, help="a multiprocessing.Pool of N workers"
    )
    p.add_argument("--unsupported", choices=["io_uring", "netlink"], default=None)
    args = p.parse_args()

    held = None
    if args.unsupported == "netlink":
        held = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    elif args.unsupported == "io_uring":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        params = ctypes.create_string_buffer(120)
        fd = libc.syscall(425, 4, params)  # io_uring_setup(4, &params)
        if fd < 0:
            print(f"io_uring_setup failed: errno {ctypes.get_errno()}", file=sys.stderr)
            return 2
        held = fd

    rng = np.random.default_rng(1234)
    state = np.ones(args.mib * 2**20 // 8, dtype=np.float64)  # every page touched
    out = open(args.file, "a", buffering=1) if args.file else None
    global STATE
    STATE = state
    pool = multiprocessing.get_context("fork").Pool(args.pool) if args.pool else None
    for i in range(args.lines):
        k = int(rng.integers(0, len(state)))
        state[k] += i
        state[i % len(state)] *= 1.0000001
        line = f"line {i} sum {state.sum():.6f} rng {rng.integers(0, 10**9)}"
        if pool is not None:
            # Workers forked with the state: they see it as it was then.
            parts = pool.map(chunk_sum, [(i, w, args.pool) for w in range(args.pool)])
            line += f" pool {sum(parts):.3f}"
        print(line, flush=True)
        if out:
            out.write(line + "\n")
        time.sleep(args.interval)
    print(f"done {args.lines} lines", flush=True)
    del held
    return 0


if __name__ == "__main__":
    sys.exit(main())
