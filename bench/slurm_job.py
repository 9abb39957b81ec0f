"""Benchmark of stasis-job (integrations/slurm): what a batch job pays.

    bench/slurm_job.py --stasis build/stasis [--mib 256 4096] [--every-mib 1024]

For each size: a numpy job holding MIB MiB is checkpointed by stasis-job on
SIGUSR1 (exit-code mode, the same dump and restore as under Slurm) and run
again to resume: checkpoint time, image size, resume time (stasis-job's log).
Then the --every cost: a job that keeps writing EVERY_MIB MiB (one pass over
its array per step) runs for --seconds without and with --every 10s; its own
work rate (steps per second) gives the slowdown, and the log the bytes written
per periodic checkpoint. Needs root. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STASIS_JOB = ROOT / "integrations" / "slurm" / "stasis-job"
PY = "/usr/bin/python3"
STASIS = "stasis"

sys.path.insert(0, str(ROOT / "tests" / "system"))
from slurm_lib import stasis_job_argv  # noqa: E402

HOLD = """
import numpy as np, sys, time
a = np.ones({mib} * 2**20 // 8)
print("ready", flush=True)
i = 0
while True:
    i += 1
    a[i % len(a)] += 1
    time.sleep(0.1)
"""

WORK = """
import numpy as np, sys, time
a = np.zeros({mib} * 2**20 // 8)
print("ready", flush=True)
steps, t0 = 0, time.monotonic()
while True:
    a += 1.0
    steps += 1
    if steps % 5 == 0:
        print(f"steps {{steps}} at {{time.monotonic() - t0:.3f}}", flush=True)
"""


def run_job(
    stasis: str, work: Path, code: str, extra: list[str], wait_ready: bool, after: float
) -> tuple[int, str, str]:
    """Runs stasis-job in WORK; SIGUSR1 AFTER seconds (after "ready" when
    WAIT_READY: a fresh job); returns exit code, stdout, stderr."""
    env = dict(os.environ, STASIS_STATE_DIR=str(work / "sessions"))
    argv = stasis_job_argv(PY, STASIS_JOB, stasis, *extra)
    argv += ["--", PY, "-c", code]
    p = subprocess.Popen(
        argv,
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        first = p.stdout.readline() if wait_ready else ""
        if wait_ready and first.strip() != "ready":
            raise RuntimeError(f"job did not start: {first!r}")
        time.sleep(after)
        p.send_signal(signal.SIGUSR1)
        out, err = p.communicate(timeout=600)
        return p.returncode, first + out, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def cleanup(work: Path) -> None:
    # A checkpoint leaves the killed session's cgroup and state file, which
    # `stasis ps` removes; stasis-job does it itself, this is for a bench
    # that failed half way.
    subprocess.run(
        [STASIS, "ps", "--state-dir", str(work / "sessions")], capture_output=True
    )
    shutil.rmtree(work, ignore_errors=True)


def log_figure(text: str, pattern: str) -> float:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else float("nan")


def bench_size(stasis: str, mib: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="stasis-bench-job-"))
    try:
        code = HOLD.format(mib=mib)
        rc, _, err = run_job(stasis, work, code, [], True, 2)
        if rc != 85:
            raise RuntimeError(f"checkpoint run: exit {rc}: {err}")
        # Resume, then checkpoint again at once to end the job.
        rc, _, err = run_job(stasis, work, code, [], False, 1)
        if rc != 85:
            raise RuntimeError(f"resume run: exit {rc}: {err}")
        log = (work / ".stasis-job" / "job.log").read_text()
        return {
            "mib": mib,
            "checkpoint_s": log_figure(log, r"checkpoint img\.1 in ([\d.]+) s"),
            "image_mib": log_figure(
                log, r"checkpoint img\.1 in [\d.]+ s, ([\d.]+) MiB"
            ),
            "resume_s": log_figure(log, r"resumed from img\.1 in ([\d.]+) s"),
        }
    finally:
        cleanup(work)


def rate(out: str) -> float:
    pts = [
        (int(m.group(1)), float(m.group(2)))
        for m in re.finditer(r"steps (\d+) at ([\d.]+)", out)
    ]
    if len(pts) < 2:
        return float("nan")
    (s0, t0), (s1, t1) = pts[0], pts[-1]
    return (s1 - s0) / (t1 - t0)


def bench_every(stasis: str, mib: int, seconds: float) -> dict[str, float]:
    res: dict[str, float] = {"mib": mib}
    for label, extra in (("plain", []), ("every", ["--every", "10s"])):
        work = Path(tempfile.mkdtemp(prefix="stasis-bench-every-"))
        try:
            rc, out, err = run_job(
                stasis, work, WORK.format(mib=mib), extra, True, seconds
            )
            res[f"rate_{label}"] = rate(out)
            if label == "every":
                log = (work / ".stasis-job" / "job.log").read_text()
                periodic = re.findall(
                    r"\(left running\) in ([\d.]+) s, ([\d.]+) MiB written.*?frozen ([\d.]+) ms",
                    log,
                )
                res["periodic_n"] = len(periodic)
                if periodic:
                    res["periodic_s"] = sum(float(p[0]) for p in periodic) / len(
                        periodic
                    )
                    res["periodic_mib"] = sum(float(p[1]) for p in periodic) / len(
                        periodic
                    )
                    res["periodic_frozen_ms"] = sum(
                        float(p[2]) for p in periodic
                    ) / len(periodic)
        finally:
            cleanup(work)
    res["slowdown_pct"] = 100.0 * (1 - res["rate_every"] / res["rate_plain"])
    return res


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--stasis", required=True)
    p.add_argument("--mib", type=int, nargs="*", default=[256, 4096])
    p.add_argument("--every-mib", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=45)
    args = p.parse_args()
    stasis = str(Path(args.stasis).resolve())
    global STASIS
    STASIS = stasis
    print("| job memory | checkpoint | image | resume |\n|---|---|---|---|")
    for mib in args.mib:
        r = bench_size(stasis, mib)
        print(
            f"| {mib} MiB | {r['checkpoint_s']:.2f} s | {r['image_mib']:.0f} MiB | {r['resume_s']:.2f} s |",
            flush=True,
        )
    if args.every_mib:
        r = bench_every(stasis, args.every_mib, args.seconds)
        print(
            f"\n--every 10s, a job rewriting {r['mib']} MiB per step, {args.seconds:.0f} s: "
            f"{r['rate_plain']:.2f} steps/s plain, {r['rate_every']:.2f} with --every "
            f"(slowdown {r['slowdown_pct']:.1f} %); {int(r.get('periodic_n', 0))} periodic "
            f"checkpoints of {r.get('periodic_mib', float('nan')):.0f} MiB each (full), "
            f"{r.get('periodic_s', float('nan')):.2f} s each, frozen "
            f"{r.get('periodic_frozen_ms', float('nan')):.0f} ms",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
