"""py_state: a CPython interpreter with a large heap survives dump/restore.

Holds a dict of mixed values, a list, and 100 MB of random bytes whose
sha256 is recorded; waits for SIGUSR2 in a loop of time.sleep(0.05); then
checks the objects against freshly built ones and the sha256.
Run as: /usr/bin/python3 py_state.py
"""
# Cases (the format is in CMakeLists.txt):
# ~130 MB resident per process and a 100 MB image per cycle.
# stasis-case: program.py_state SERIAL ${PROGRAM}
# stasis-case: program.py_state.cycles3 SERIAL ${PROGRAM} --cycles 3
# stasis-selftest: selftest.py_state ${PROGRAM}
import hashlib
import os
import random
import signal
import sys
import time

triggered = False


def on_usr2(signum, frame):
    global triggered
    triggered = True


def make_dict():
    return {
        "int": 42,
        "neg": -7,
        "big": 2**200 + 12345,
        "float": 3.25,
        "tiny": 1e-300,
        "str": "stasis \u2713 \u00e9t\u00e9",
        "bytes": bytes(range(256)),
        "none": None,
        "bools": (True, False),
        "tuple": (1, "two", 3.0, (4,)),
        "set": frozenset({3, 4, 5}),
        "nested": {"a": [1, 2, {"b": [b"x", "y"]}], 7: "seven"},
        "complex": 1 + 2j,
    }


def make_list():
    return [i * i for i in range(100_000)] + [str(i) for i in range(1000)]


def main():
    signal.signal(signal.SIGUSR2, on_usr2)
    pid = os.getpid()
    d = make_dict()
    lst = make_list()
    data = random.randbytes(100 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    ids = (id(d), id(lst), id(data))

    print("READY", flush=True)
    while not triggered:
        time.sleep(0.05)

    failures = []
    if os.getpid() != pid:
        failures.append(f"getpid() {os.getpid()}, expected {pid}")
    if d != make_dict():
        bad = [k for k in make_dict() if d.get(k) != make_dict()[k]]
        failures.append(f"dict differs at keys {bad!r}")
    if lst != make_list():
        failures.append("list differs")
    if len(data) != 100 * 1024 * 1024:
        failures.append(f"data has {len(data)} bytes")
    elif hashlib.sha256(data).hexdigest() != digest:
        failures.append("sha256 of the 100 MB bytes differs")
    if (id(d), id(lst), id(data)) != ids:
        failures.append("object addresses changed")
    # The interpreter still allocates and computes.
    extra = [random.random() for _ in range(100_000)]
    if len(extra) != 100_000 or sum(range(1000)) != 499500:
        failures.append("interpreter misbehaves after restore")

    if failures:
        print("FAIL: " + "; ".join(failures), flush=True)
        return 1
    print("PASS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
