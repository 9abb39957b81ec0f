"""Batch jobs under a real Slurm with stasis-job (integrations/slurm).

    test_slurm_jobs.py --stasis BUILD/stasis CASE

Cases:
  preempt     a 256 MiB numpy job in a PreemptMode=REQUEUE partition is
              preempted by a job of a higher partition: it checkpoints within
              the grace time, is requeued, resumes once the preemptor ended;
              its output (relayed stdout, and a file it holds open) has every
              line once, in order, as an uninterrupted run prints them.
  preempt_cgroup  the same with proctrack/cgroup (cgroup/v1 freezer here): the
              restored session is inside the requeued job's cgroup.
  timelimit   the same job with -t 1 --signal=B:USR1@50 reaches its time limit,
              is requeued and resumes, twice in a row.
  nodeloss    --every 8s checkpoints with --leave-running; then slurmd, slurmstepd
              and every process of the job are killed -9 (a node lost): the job
              is requeued on the other node and resumes from the last periodic
              checkpoint; the file it writes is cut back to its size then and
              the relayed output drops what it had already printed: no line
              lost, none twice.
  pool        a multiprocessing.Pool job (forked workers sharing its state):
              `scancel --signal=USR2 --batch` checkpoints it and it goes on;
              then it is preempted and resumed.
  scancel     a plain scancel ends the job: no checkpoint, no requeue.
  exitcode    HTCondor's contract without Slurm: --checkpoint-exit-code 85 after
              a checkpoint; the same command run again in the same directory
              continues.
  failing     the job holds an object stasis refuses (a netlink socket): the
              checkpoint fails, the job goes on, the reason is in its error file.
  corrupt     a corrupted image at resume is refused: the job fails with a clear
              message, the image is kept, nothing starts over.

Needs root (stasis, the Slurm daemons). Everything is removed at the end,
also on failure (SlurmCluster's exit).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).parent))
from slurm_lib import SlurmCluster, exit_on_signals, stasis_job_argv  # noqa: E402

HERE = Path(__file__).resolve().parent
STASIS_JOB = Path(
    os.environ.get(
        "STASIS_JOB", HERE.parent.parent / "integrations" / "slurm" / "stasis-job"
    )
)
WORKLOAD = HERE / "slurm_workload.py"
PY = "/usr/bin/python3"


class Failure(Exception):
    pass


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise Failure(msg)


def expected_lines(mib: int, n: int, pool: int = 0) -> list[str]:
    """The lines an uninterrupted run prints."""
    out = subprocess.run(
        [PY, str(WORKLOAD), "--mib", str(mib), "--lines", str(n), "--interval", "0"]
        + (["--pool", str(pool)] if pool else []),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


def job_lines(path: Path) -> list[str]:
    """The workload's lines in a job's output (Slurm's own lines left out)."""
    if not path.exists():
        return []
    return [
        ln
        for ln in path.read_text(errors="replace").splitlines()
        if ln.startswith("line ") or ln.startswith("done ")
    ]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise Failure(f"timed out after {timeout} s waiting for {what}")


def batch_script(
    stasis: str, ckdir: Path, workload_args: str, job_args: str = ""
) -> str:
    return (
        "#!/bin/bash\n"
        f"exec {PY} {STASIS_JOB} --stasis {stasis} --dir {ckdir} {job_args} -- "
        f"{PY} {WORKLOAD} {workload_args}\n"
    )


def compare_output(got: list[str], want: list[str], what: str) -> None:
    nums = [int(ln.split()[1]) for ln in got if ln.startswith("line ")]
    dup = sorted({n for n in nums if nums.count(n) > 1})
    missing = sorted(set(range(sum(w.startswith("line ") for w in want))) - set(nums))
    check(not dup, f"{what}: repeated lines {dup[:10]}")
    check(not missing, f"{what}: missing lines {missing[:10]}")
    for i, (g, w) in enumerate(zip(got, want)):
        check(g == w, f"{what}: line {i} is {g!r}, an uninterrupted run says {w!r}")
    check(len(got) == len(want), f"{what}: {len(got)} lines, want {len(want)}")


def job_log(ckdir: Path) -> str:
    p = ckdir / "job.log"
    return p.read_text() if p.exists() else ""


def figures(ckdir: Path) -> None:
    for ln in job_log(ckdir).splitlines():
        if any(
            w in ln
            for w in (
                "checkpoint img",
                "resumed from",
                "CMD ended",
                "cut back",
                "dropping",
            )
        ):
            print("  " + ln.split(": ", 1)[1], flush=True)


def preempt_and_resume(
    slurm: SlurmCluster, job: int, ckdir: Path, ck_mark: str, proctrack: str
) -> None:
    """Submits a preempting job to the high partition, checks that `job`
    checkpoints (its log shows `ck_mark`) within the grace time and resumes
    once the preemptor is done and, with proctrack/cgroup, that the restored
    session is inside the requeued job's cgroup."""
    t0 = time.monotonic()
    high = slurm.sbatch(
        "#!/bin/sh\nsleep 8\n", "-p", "high", "-n2", f"-o{slurm.dir}/h.out"
    )
    wait_for(lambda: ck_mark in job_log(ckdir), 60, "the checkpoint")
    ck_at = time.monotonic() - t0
    check(
        ck_at < slurm.grace_time,
        f"checkpoint done {ck_at:.1f} s after the preemptor came, grace {slurm.grace_time} s",
    )
    print(
        f"preempt: checkpoint complete {ck_at:.1f} s after the preemptor was submitted"
    )
    slurm.wait_state(high, "COMPLETED", 120)
    wait_for(lambda: "resumed from" in job_log(ckdir), 120, "the resume")
    if proctrack == "cgroup":
        # The restored session is inside the requeued job's cgroup: Slurm
        # signals, freezes and accounts it as the job.
        for pid in slurm.processes_of_job(job):
            with contextlib.suppress(OSError):
                cg = Path(f"/proc/{pid}/cgroup").read_text()
                check(
                    f"/job_{job}/" in cg,
                    f"pid {pid} is outside the job's cgroup: {cg}",
                )


def case_preempt_cgroup(stasis: str) -> None:
    case_preempt(stasis, proctrack="cgroup")


def case_preempt(
    stasis: str, mib: int = 256, lines: int = 45, proctrack: str = "linuxproc"
) -> None:
    want = expected_lines(mib, lines)
    with SlurmCluster(
        grace_time=60, kill_wait=30, cred_expire=5, proctrack=proctrack
    ) as slurm:
        ckdir = slurm.dir / "ck"
        out = slurm.dir / "job.out"
        err = slurm.dir / "job.err"
        wfile = slurm.dir / "work.out"
        job = slurm.sbatch(
            batch_script(stasis, ckdir, f"--mib {mib} --lines {lines} --file {wfile}"),
            "-p",
            "low",
            "-n2",
            "--requeue",
            "--signal=B:USR1@60",
            "--open-mode=append",
            f"-o{out}",
            f"-e{err}",
        )
        slurm.wait_state(job, "RUNNING", 60)
        wait_for(lambda: len(job_lines(out)) >= 8, 60, "8 lines of output")
        preempt_and_resume(slurm, job, ckdir, "checkpoint img", proctrack)
        slurm.wait_state(job, "COMPLETED", lines + 120)
        compare_output(job_lines(out), want, "relayed stdout")
        compare_output(job_lines(wfile), want[:-1], "the file the job holds open")
        info = slurm.job(job)
        check(info.get("Restarts") == "1", f"Restarts={info.get('Restarts')}, want 1")
        figures(ckdir)
        check(
            "error" not in job_log(ckdir), "errors in the job log:\n" + job_log(ckdir)
        )


def case_timelimit(stasis: str, mib: int = 256, lines: int = 80) -> None:
    want = expected_lines(mib, lines)
    with SlurmCluster(grace_time=60, kill_wait=30, cred_expire=5) as slurm:
        ckdir = slurm.dir / "ck"
        out = slurm.dir / "job.out"
        job = slurm.sbatch(
            batch_script(stasis, ckdir, f"--mib {mib} --lines {lines}"),
            "-t",
            "1",
            "--requeue",
            "--signal=B:USR1@50",
            "--open-mode=append",
            f"-o{out}",
        )
        slurm.wait_state(job, "COMPLETED", 300)
        compare_output(job_lines(out), want, "relayed stdout")
        info = slurm.job(job)
        restarts = int(info.get("Restarts", "0"))
        check(restarts >= 2, f"Restarts={restarts}, want at least 2")
        figures(ckdir)


def case_exitcode(stasis: str) -> None:
    want = expected_lines(16, 12)
    work = Path(tempfile.mkdtemp(prefix="stasis-exitcode-"))
    env = dict(os.environ, STASIS_STATE_DIR=str(work / "sessions"))
    argv = stasis_job_argv(PY, STASIS_JOB, stasis, "--")
    argv += [PY, str(WORKLOAD), "--mib", "16", "--lines", "12"]
    outs = []
    try:
        for run in range(3):
            out = open(work / f"out{run}", "w")
            p = subprocess.Popen(
                argv, cwd=work, env=env, stdout=out, stderr=subprocess.PIPE
            )
            try:
                if run < 2:
                    # Running (started or restored) once it writes again.
                    wait_for(
                        lambda: len(job_lines(work / f"out{run}")) >= 1,
                        60,
                        f"run {run}'s first line",
                    )
                    p.send_signal(signal.SIGUSR1)
                _, errs = p.communicate(timeout=60)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            rc = p.returncode
            outs += job_lines(work / f"out{run}")
            want_rc = 85 if run < 2 else 0
            check(
                rc == want_rc, f"run {run}: exit {rc}, want {want_rc}: {errs.decode()}"
            )
        compare_output(outs, want, "three runs' stdout")
        log = (work / ".stasis-job" / "job.log").read_text()
        name = re.search(r"as session (\S+);", log)
        check(name is not None, f"no session in job.log:\n{log}")
        assert name is not None
        for mount in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
            left = Path(mount, "stasis", name.group(1))
            check(not left.exists(), f"{left} left behind")
    finally:
        subprocess.run(
            [stasis, "ps", "--state-dir", str(work / "sessions")], capture_output=True
        )
        shutil.rmtree(work, ignore_errors=True)


def start_job(
    slurm: SlurmCluster, stasis: str, workload_args: str, *sbatch_args: str
) -> tuple[int, Path, Path, Path]:
    """Submits the workload under stasis-job as a requeueable batch job
    (checkpoints in ck/, output in job.out and job.err of the cluster's
    directory) and waits for its first 3 lines; returns the job id, ckdir,
    out and err."""
    ckdir = slurm.dir / "ck"
    out, err = slurm.dir / "job.out", slurm.dir / "job.err"
    job = slurm.sbatch(
        batch_script(stasis, ckdir, workload_args),
        "--requeue",
        *sbatch_args,
        f"-o{out}",
        f"-e{err}",
    )
    slurm.wait_state(job, "RUNNING", 60)
    wait_for(lambda: len(job_lines(out)) >= 3, 60, "3 lines of output")
    return job, ckdir, out, err


def case_failing(stasis: str) -> None:
    with SlurmCluster(grace_time=30, kill_wait=10, cred_expire=5) as slurm:
        job, ckdir, out, err = start_job(
            slurm, stasis, "--mib 16 --lines 30 --unsupported netlink"
        )
        slurm.run("scancel", "--signal=USR1", "--batch", str(job))
        wait_for(
            lambda: "checkpoint failed" in err.read_text(), 30, "the failure in job.err"
        )
        n = len(job_lines(out))
        wait_for(
            lambda: len(job_lines(out)) > n, 30, "a line after the failed checkpoint"
        )
        failed = [
            ln for ln in err.read_text().splitlines() if "checkpoint failed" in ln
        ][0]
        # The reason names the process, the fd and the object.
        check(
            re.search(r"pid \d+ fd \d+ \(socket:", failed) is not None,
            f"no reason: {failed}",
        )
        check("netlink socket" in failed, f"the socket's family is not named: {failed}")
        print("failing: " + failed)
        slurm.wait_state(job, "COMPLETED", 60)
        check(len(job_lines(out)) == 31, "the job did not finish its 30 lines")


def case_corrupt(stasis: str) -> None:
    with SlurmCluster(grace_time=30, kill_wait=10, cred_expire=5) as slurm:
        job, ckdir, out, err = start_job(
            slurm, stasis, "--mib 16 --lines 40", "--open-mode=append"
        )
        # Hold the job once it is requeued, so the image can be damaged first.
        slurm.run("scancel", "--signal=USR1", "--batch", str(job))
        wait_for(lambda: "requeueing" in job_log(ckdir), 30, "the requeue")
        slurm.wait_state(job, {"PENDING"}, 60)
        slurm.run("scontrol", "hold", str(job))
        img = sorted(ckdir.glob("img.*"))[-1] / "stasis.img"
        size = img.stat().st_size
        with open(img, "r+b") as f:
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0xFF]))
        slurm.run("scontrol", "release", str(job))
        state = slurm.wait_state(job, {"FAILED", "COMPLETED"}, 120)
        text = err.read_text()
        check(state == "FAILED", f"job {state}, want FAILED:\n{text}")
        check("cannot resume" in text and "kept" in text, f"no clear message:\n{text}")
        check(img.exists() and img.stat().st_size == size, "the image was not kept")
        n = len(job_lines(out))
        check(n < 40, "the job started over")
        print(
            "corrupt: " + [ln for ln in text.splitlines() if "cannot resume" in ln][0]
        )


def case_pool(stasis: str, mib: int = 64, lines: int = 30) -> None:
    """A multiprocessing.Pool job, preempted and resumed."""
    want = expected_lines(mib, lines, pool=2)
    with SlurmCluster(grace_time=60, kill_wait=30, cred_expire=5) as slurm:
        ckdir = slurm.dir / "ck"
        out = slurm.dir / "job.out"
        job = slurm.sbatch(
            batch_script(stasis, ckdir, f"--mib {mib} --lines {lines} --pool 2"),
            "-n2",
            "--requeue",
            "--signal=B:USR1@60",
            "--open-mode=append",
            f"-o{out}",
        )
        slurm.wait_state(job, "RUNNING", 60)
        wait_for(lambda: len(job_lines(out)) >= 5, 60, "5 lines of output")
        # The operator's "checkpoint now": the job goes on.
        slurm.run("scancel", "--signal=USR2", "--batch", str(job))
        wait_for(
            lambda: "img.1 (left running)" in job_log(ckdir), 30, "the USR2 checkpoint"
        )
        slurm.sbatch(
            "#!/bin/sh\nsleep 3\n", "-p", "high", "-n2", f"-o{slurm.dir}/h.out"
        )
        wait_for(lambda: "resumed from" in job_log(ckdir), 120, "the resume")
        slurm.wait_state(job, "COMPLETED", lines + 120)
        compare_output(job_lines(out), want, "relayed stdout")
        figures(ckdir)


def case_nodeloss(stasis: str, mib: int = 256, lines: int = 60) -> None:
    """--every checkpoints; then the node is lost (slurmd and every process
    of the job killed -9): the job is requeued on the other node and resumes
    from the last periodic checkpoint, with no line lost or repeated."""
    want = expected_lines(mib, lines)
    with SlurmCluster(
        nodes=2, grace_time=60, kill_wait=30, cred_expire=5, slurmd_timeout=10
    ) as slurm:
        ckdir = slurm.dir / "ck"
        out = slurm.dir / "job.out"
        wfile = slurm.dir / "work.out"
        job = slurm.sbatch(
            batch_script(
                stasis,
                ckdir,
                f"--mib {mib} --lines {lines} --file {wfile}",
                "--every 8s",
            ),
            "-n2",
            "--requeue",
            "--open-mode=append",
            f"-o{out}",
        )
        slurm.wait_state(job, "RUNNING", 60)
        node = slurm.job(job)["NodeList"]
        wait_for(
            lambda: "checkpoint img.2" in job_log(ckdir), 90, "two periodic checkpoints"
        )
        n = len(job_lines(out))
        wait_for(lambda: len(job_lines(out)) >= n + 4, 30, "4 more lines")
        # The node dies: slurmd and slurmstepd first (nothing may report the
        # job's end), then every process of the job.
        slurm.procs[f"slurmd-{node}"].kill()
        slurm.procs[f"slurmd-{node}"].wait()
        for pid in slurm.our_stepds():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for _ in range(3):
            for pid in slurm.processes_of_job(job):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        lost_at = len(job_lines(out))
        print(f"nodeloss: {node} lost after {lost_at} lines")
        wait_for(
            lambda: "resumed from" in job_log(ckdir),
            150,
            "the resume on the other node",
        )
        check(slurm.job(job)["NodeList"] != node, "resumed on the lost node")
        slurm.wait_state(job, "COMPLETED", lines + 120)
        compare_output(job_lines(out), want, "relayed stdout")
        compare_output(job_lines(wfile), want[:-1], "the file the job holds open")
        figures(ckdir)


def case_scancel(stasis: str) -> None:
    """A plain scancel ends the job: no checkpoint, no requeue."""
    with SlurmCluster(grace_time=30, kill_wait=10, cred_expire=5) as slurm:
        job, ckdir, out, err = start_job(
            slurm, stasis, "--mib 16 --lines 100", "--signal=B:USR1@60"
        )
        slurm.run("scancel", str(job))
        state = slurm.wait_state(
            job, {"CANCELLED", "PENDING", "COMPLETED", "FAILED"}, 60
        )
        check(state == "CANCELLED", f"job {state} after scancel, want CANCELLED")
        time.sleep(8)  # a requeue would show by now (cred_expire 5 s)
        state = slurm.state(job)
        check(state == "CANCELLED", f"job {state} 8 s after scancel, want CANCELLED")
        check(not list(ckdir.glob("img.*")), "scancel took a checkpoint")
        print("scancel: " + job_log(ckdir).strip().splitlines()[-1].split(": ", 1)[1])


def run_case(name: str, case: Callable[[], None]) -> int:
    """Runs one case as a ctest test: 77 (skipped) without root or Slurm,
    1 on a Failure, 0 when it passes."""
    if os.geteuid() != 0:
        print("SKIP: needs root")
        return 77
    if not shutil.which("slurmctld") or not shutil.which("munged"):
        print("SKIP: Slurm or munge not installed (scripts/install-deps.sh)")
        return 77
    with exit_on_signals():
        try:
            case()
        except Failure as e:
            print(f"FAIL: {name}: {e}", flush=True)
            return 1
    print(f"PASS: {name}")
    return 0


CASES = {
    "scancel": case_scancel,
    "pool": case_pool,
    "nodeloss": case_nodeloss,
    "preempt": case_preempt,
    "preempt_cgroup": case_preempt_cgroup,
    "timelimit": case_timelimit,
    "exitcode": case_exitcode,
    "failing": case_failing,
    "corrupt": case_corrupt,
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--stasis", required=True)
    p.add_argument("case", choices=sorted(CASES))
    args = p.parse_args()
    stasis = str(Path(args.stasis).resolve())
    return run_case(args.case, lambda: CASES[args.case](stasis))


if __name__ == "__main__":
    sys.exit(main())
