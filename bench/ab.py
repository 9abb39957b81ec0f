#!/usr/bin/env python3
"""Before/after in one run: a benchmark of bench/ run with two stasis binaries in turn.

    /usr/bin/python3 bench/ab.py --before OLD/stasis --after build/stasis --rounds 3 -- bench/dump_restore_1g.py --runs 3

Each round runs the benchmark once with --stasis BEFORE and once with --stasis AFTER (the order
alternates between rounds, so a machine that drifts weighs on both alike), and keeps the lines the
benchmark gives its medians on. Machines of one kind differ by 2-4x here: only figures taken in the
same run compare. The benchmark runs under the interpreter ab.py runs under (Debian's
/usr/bin/python3 for those that need its modules). Give the `before` binary of the commit you
compare with (e.g. a build of the last landed commit in another directory).
"""
import argparse
import subprocess
import sys

SUMMARY_WORDS = ("median", "medians", "kernel array", "ms/process", "ms/thread")


def summary_lines(output: str) -> list[str]:
    keep = []
    in_medians = False
    for line in output.splitlines():
        low = line.strip().lower()
        if low.startswith("medians"):
            in_medians = True
            continue
        if in_medians and line.startswith("  "):
            keep.append(line.strip())
            continue
        in_medians = False
        if any(w in low for w in SUMMARY_WORDS):
            keep.append(line.strip())
    return keep


def run(bench: list[str], stasis: str) -> str:
    cmd = [sys.executable, bench[0], "--stasis", stasis] + bench[1:]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"ab.py: {' '.join(cmd)} exited {done.returncode}")
    return done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the baseline stasis binary")
    ap.add_argument("--after", required=True, help="the stasis binary under test")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("bench", nargs=argparse.REMAINDER, help="-- bench/X.py [its arguments]")
    args = ap.parse_args()
    bench = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    if not bench:
        ap.error("name the benchmark after --")
    results: dict[str, list[list[str]]] = {"before": [], "after": []}
    for r in range(args.rounds):
        order = [("before", args.before), ("after", args.after)]
        if r % 2:
            order.reverse()
        for label, binary in order:
            lines = summary_lines(run(bench, binary))
            results[label].append(lines)
            for line in lines:
                print(f"round {r + 1} {label:<6} {line}", flush=True)
    print(f"\n{' '.join(bench)}: before = {args.before}, after = {args.after}")
    for label in ("before", "after"):
        for r, lines in enumerate(results[label]):
            for line in lines:
                print(f"  {label:<6} round {r + 1}: {line}")


if __name__ == "__main__":
    main()
