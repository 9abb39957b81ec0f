#!/usr/bin/env python3
"""The command line of image streams: what `-o -`, `-i -` and `inspect -`
refuse, and that a streamed image inspects and verifies like a directory's.

A `sleep` is the tree. Every refusal must leave it running, untraced; the
last step streams it for real (`dump -o - | inspect -`), which kills it.
"""
import argparse
import json
import os
import pty
import shutil
import subprocess
import sys
import tempfile
import time


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def untouched(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    return fields["TracerPid"].strip() == "0" and fields["State"][0] in "SR"


def refused(argv, words, what, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE):
    p = subprocess.run(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=30)
    if p.returncode == 0:
        fail(f"{what}: `{' '.join(argv)}` succeeded, expected a refusal")
    if words.lower() not in p.stderr.lower():
        fail(f"{what}: stderr does not say {words!r}: {p.stderr.strip()}")
    print(f"{what}: refused ({p.stderr.strip().splitlines()[-1]})", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stasis", required=True)
    a = ap.parse_args()
    s = a.stasis
    work = tempfile.mkdtemp(prefix="stasis-stream-cli-")
    tree = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    master, slave = pty.openpty()
    try:
        time.sleep(0.2)
        pid = str(tree.pid)
        refused([s, "dump", "-t", pid, "-o", "-"], "refusing to write an image to a terminal",
                "stdout on a terminal", stdout=slave)
        refused([s, "dump", "-t", pid, "-o", os.path.join(work, "file")], "-o takes '-'",
                "-o with a path")
        refused([s, "dump", "-t", pid], "-D DIR or -o -", "no destination")
        refused([s, "restore", "-i", "-", "--shell-job"], "stdin cannot be both",
                "restore -i - --shell-job")
        refused([s, "restore", "-i", "-"], "refusing to read an image from a terminal",
                "stdin on a terminal", stdin=slave)
        # A reader that goes away: the dump fails (EPIPE), and does not die
        # of SIGPIPE with the tree frozen.
        read_end, write_end = os.pipe()
        os.close(read_end)
        d = subprocess.run([s, "dump", "-t", pid, "-o", "-"], stdin=subprocess.DEVNULL,
                           stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
        os.close(write_end)
        if d.returncode != 1 or "EPIPE" not in d.stderr:
            fail(f"dump into a pipe nobody reads: exit {d.returncode}, expected 1 naming EPIPE: "
                 f"{d.stderr.strip()}")
        print(f"a reader gone: dump failed ({d.stderr.strip().splitlines()[-1]})", flush=True)
        if not untouched(tree.pid):
            fail("the tree is not running untouched after the refusals")
        # The real thing: a stream into a file, inspected and verified from stdin.
        img = os.path.join(work, "img.stream")
        with open(img, "wb") as out:
            d = subprocess.run([s, "dump", "-t", pid, "-o", "-"], stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.PIPE, text=True, timeout=60)
        if d.returncode != 0:
            fail(f"dump -o - into a file failed: {d.stderr}")
        tree.wait(timeout=10)
        with open(img, "rb") as f:
            i = subprocess.run([s, "inspect", "-"], stdin=f, capture_output=True, text=True)
        if i.returncode != 0 or json.loads(i.stdout)["records"][0]["type"] != "manifest":
            fail(f"inspect - failed (exit {i.returncode}): {i.stderr} {i.stdout[:300]}")
        with open(img, "rb") as f:
            v = subprocess.run([s, "inspect", "--verify", "-"], stdin=f, capture_output=True, text=True)
        if v.returncode != 0:
            fail(f"inspect --verify - failed: {v.stderr}")
        print(f"inspect -: JSON of {len(json.loads(i.stdout)['records'])} records; {v.stdout.strip()}",
              flush=True)
        print("PASS")
        return 0
    finally:
        os.close(master)
        os.close(slave)
        if tree.poll() is None:
            tree.kill()
            tree.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
