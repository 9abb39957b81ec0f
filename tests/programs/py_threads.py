#!/usr/bin/python3
"""A python3 process with 12 threads, as a Jupyter kernel has: threads
blocked in a Condition, a queue, a socketpair-free pipe read, time.sleep, an
Event with a timeout, and a few computing. After restore every thread must
still be there (same native id, same name), finish its wait the normal way,
and the computing threads must still be computing correctly.
"""
# Cases (the format is in CMakeLists.txt):
# A python3 process with 12 threads, parked in every way a kernel's are.
# stasis-case: program.py_threads ${PROGRAM}
# stasis-case: program.py_threads.cycles3 ${PROGRAM} --cycles 3
import os
import queue
import signal
import sys
import threading
import time

triggered = threading.Event()
signal.signal(signal.SIGUSR2, lambda *a: triggered.set())

cond = threading.Condition()
go = [False]
q = queue.Queue()
r, w = os.pipe()
done = {}
ids = {}
counters = [0] * 4


def record(name):
    ids[name] = threading.get_native_id()


def waiter():
    record("waiter")
    with cond:
        while not go[0]:
            cond.wait()
    done["waiter"] = True


def getter():
    record("getter")
    done["getter"] = q.get() == "item"


def reader():
    record("reader")
    done["reader"] = os.read(r, 4) == b"wake"


def sleeper():
    record("sleeper")
    while not go[0]:
        time.sleep(0.2)
    done["sleeper"] = True


def event_waiter():
    record("event")
    while not triggered.wait(timeout=30):
        pass
    # Stay until main has counted the threads and lets everyone go.
    while not go[0]:
        time.sleep(0.01)
    done["event"] = True


def computer(i):
    record(f"compute{i}")
    acc, n = 0, 0
    while not go[0]:
        n += 1
        acc += n
        counters[i] = n
    done[f"compute{i}"] = acc == n * (n + 1) // 2


def main():
    threads = [threading.Thread(target=f, name=f.__name__) for f in
               (waiter, getter, reader, sleeper, event_waiter)]
    threads += [threading.Thread(target=computer, args=(i,), name=f"computer{i}") for i in range(4)]
    threads += [threading.Thread(target=lambda: time.sleep(3600), name=f"idle{i}", daemon=True)
                for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    if threading.active_count() != 12:
        print(f"FAIL: {threading.active_count()} threads, wanted 12", flush=True)
        return 1
    before = dict(ids)
    print("READY", flush=True)
    # Poll: CPython runs signal handlers in the main thread only, and the
    # kernel may deliver the trigger to any of the 12 threads; a main thread
    # blocked in a lock without a timeout would never see it.
    while not triggered.is_set():
        time.sleep(0.05)

    failures = []
    now = {t.name: t.native_id for t in threading.enumerate()}
    if len(now) != 12:
        failures.append(f"{len(now)} threads after restore")
    snapshot = list(counters)
    time.sleep(0.2)
    if not all(c2 > c1 for c1, c2 in zip(snapshot, counters)):
        failures.append("computing threads stopped")
    with cond:
        go[0] = True
        cond.notify_all()
    q.put("item")
    os.write(w, b"wake")
    for t in threads[:9]:
        t.join(timeout=10)
    for name in before:
        if not done.get(name):
            failures.append(f"thread {name} did not finish right")
    if ids != before:
        failures.append("thread ids changed")
    print("FAIL: " + "; ".join(failures) if failures else "PASS", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
