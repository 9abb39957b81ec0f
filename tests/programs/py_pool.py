#!/usr/bin/python3
"""multiprocessing.Pool(2) working on a large shared array.

The pool forks two workers; the array is a multiprocessing.RawArray (an
unlinked /dev/shm file that the parent holds open and every process maps
shared); the pool adds three handler threads in the parent, pipes between
the processes and semaphores (unlinked /dev/shm/sem.* files). After restore,
the same map must give the same results, a change the parent makes to the
array must be seen by the workers (it is still shared), and the pool must
still shut down cleanly. Prints the tree's total RSS before and after, so a
restore that multiplied shared memory would show.
"""
# Cases (the format is in CMakeLists.txt):
# stasis-case: program.py_pool SERIAL ${PROGRAM}
# stasis-case: program.py_pool.cycles3 SERIAL ${PROGRAM} --cycles 3
# stasis-case: program.py_pool.nobody SERIAL ${PROGRAM} --user nobody
import hashlib
import multiprocessing as mp
import os
import signal
import sys
import time

N = 4_000_000  # doubles: 32 MB
CHUNKS = 8

array = None


def init(shared):
    global array
    array = shared


def work(i):
    step = N // CHUNKS
    view = memoryview(array).cast("B")
    lo, hi = i * step * 8, (i + 1) * step * 8
    return i, hashlib.sha256(view[lo:hi]).hexdigest(), os.getpid()


def tree_rss_kib(root):
    total = 0
    pids = [root] + [int(p) for p in open(f"/proc/{root}/task/{root}/children").read().split()]
    for pid in pids:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def main():
    triggered = []
    signal.signal(signal.SIGUSR2, lambda *a: triggered.append(1))
    shared = mp.RawArray("d", N)
    for i in range(0, N, 4096):
        shared[i] = i * 0.5
    ctx = mp.get_context("fork")
    pool = ctx.Pool(2, initializer=init, initargs=(shared,))
    before = sorted(pool.map(work, range(CHUNKS)))
    workers = {r[2] for r in before}
    rss_before = tree_rss_kib(os.getpid())
    print("READY", flush=True)
    while not triggered:
        time.sleep(0.05)

    rss_after = tree_rss_kib(os.getpid())
    failures = []
    after = sorted(pool.map(work, range(CHUNKS)))
    if [r[:2] for r in after] != [r[:2] for r in before]:
        failures.append("results changed after restore")
    if {r[2] for r in after} - workers:
        failures.append(f"new workers {sorted({r[2] for r in after} - workers)}: the pool lost its own")
    shared[0] = 12345.0  # the workers must see it
    changed = sorted(pool.map(work, range(CHUNKS)))
    if changed[0][1] == before[0][1]:
        failures.append("a change to the shared array is not seen by the workers")
    pool.close()
    pool.join()
    print(f"rss of the tree: {rss_before} KiB before, {rss_after} KiB after", flush=True)
    if rss_after > rss_before * 1.5 + 20_000:
        failures.append(f"tree RSS grew from {rss_before} to {rss_after} KiB")
    print("FAIL: " + "; ".join(failures) if failures else "PASS", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
