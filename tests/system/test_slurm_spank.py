"""Batch jobs under a real Slurm with the SPANK plugin (`#SBATCH --stasis`).

    test_slurm_spank.py --stasis BUILD/stasis --plugin BUILD/.../stasis.so CASE

The cluster's plugstack.conf loads the plugin (stasis_job= and stasis= point
at this tree's stasis-job and build), and the batch scripts run the workload
directly: no stasis-job line, only the option.

Cases:
  preempt   a job submitted with --stasis=every:1h: `scancel --signal=USR2
            --batch` (the operator's "checkpoint now") checkpoints it and it
            goes on; then it is preempted by a job of a higher partition,
            checkpointed within the grace time, requeued and resumed; its
            output (relayed stdout and a file it holds open) has every line
            once, in order, as an uninterrupted run prints them.
  preempt_cgroup  the same with proctrack/cgroup: the restored session is in
            the requeued job's cgroup.
  refused   --stasis=bogus is refused by sbatch; a job of an ordinary user
            (nobody) with --stasis is refused by sbatch, with the reason, and
            by slurmstepd when root submits it with --uid=nobody (the job
            fails, its error file says why); without --stasis a job of
            nobody runs as usual.
  srun      an srun step in a --stasis job runs (it reads the option back
            from the job's environment) and is left alone.

Needs root (stasis, the Slurm daemons). Everything is removed at the end,
also on failure (SlurmCluster's exit).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from slurm_lib import SlurmCluster  # noqa: E402
from test_slurm_jobs import (  # noqa: E402
    PY,
    STASIS_JOB,
    WORKLOAD,
    Failure,
    check,
    compare_output,
    expected_lines,
    figures,
    job_lines,
    job_log,
    preempt_and_resume,
    run_case,
    wait_for,
)


def plugstack(plugin: str, stasis: str) -> str:
    return f"required {plugin} stasis_job={STASIS_JOB} stasis={stasis}"


def case_preempt_cgroup(stasis: str, plugin: str) -> None:
    case_preempt(stasis, plugin, proctrack="cgroup")


def case_preempt(
    stasis: str,
    plugin: str,
    mib: int = 256,
    lines: int = 45,
    proctrack: str = "linuxproc",
) -> None:
    want = expected_lines(mib, lines)
    with SlurmCluster(
        grace_time=60,
        kill_wait=30,
        cred_expire=5,
        proctrack=proctrack,
        plugstack=plugstack(plugin, stasis),
    ) as slurm:
        home = slurm.dir / "home"  # the job's $HOME: its images go under it
        home.mkdir()
        out = slurm.dir / "job.out"
        err = slurm.dir / "job.err"
        wfile = slurm.dir / "work.out"
        script = (
            "#!/bin/bash\n"
            f"{PY} {WORKLOAD} --mib {mib} --lines {lines} --file {wfile}\n"
            'echo "script ends after the workload"\n'
        )
        job = slurm.sbatch(
            script,
            "--stasis=every:1h",
            f"--export=ALL,HOME={home}",
            "-p",
            "low",
            "-n2",
            "--requeue",
            "--signal=B:USR1@60",
            "--open-mode=append",
            f"-o{out}",
            f"-e{err}",
        )
        ckdir = home / ".stasis" / "jobs" / str(job)
        slurm.wait_state(job, "RUNNING", 60)
        wait_for(lambda: len(job_lines(out)) >= 5, 60, "5 lines of output")
        check(
            "as session job-" in job_log(ckdir),
            f"the script does not run under stasis-job: {job_log(ckdir)!r}",
        )
        # The operator's "checkpoint now": the job goes on.
        slurm.run("scancel", "--signal=USR2", "--batch", str(job))
        wait_for(
            lambda: "img.1 (left running)" in job_log(ckdir), 30, "the USR2 checkpoint"
        )
        n = len(job_lines(out))
        wait_for(lambda: len(job_lines(out)) > n + 1, 20, "lines after the USR2 one")
        preempt_and_resume(slurm, job, ckdir, "img.2 in", proctrack)
        slurm.wait_state(job, "COMPLETED", lines + 120)
        got = job_lines(out)
        compare_output(got, want, "relayed stdout")
        compare_output(job_lines(wfile), want[:-1], "the file the job holds open")
        tail = out.read_text().splitlines()
        check(
            tail.count("script ends after the workload") == 1,
            "the script's own last line is not there once",
        )
        info = slurm.job(job)
        check(info.get("Restarts") == "1", f"Restarts={info.get('Restarts')}, want 1")
        figures(ckdir)
        log = job_log(ckdir)
        check("error" not in log, "errors in the job log:\n" + log)
        check("STASIS_SPANK" not in out.read_text(), "the plugin's variables leaked")


def case_refused(stasis: str, plugin: str) -> None:
    with SlurmCluster(plugstack=plugstack(plugin, stasis)) as slurm:
        script = "#!/bin/sh\ntrue\n"
        try:
            slurm.sbatch(script, "--stasis=bogus")
        except RuntimeError as e:
            check("--stasis" in str(e), f"--stasis=bogus: {e}")
            print(f"refused: {' / '.join(str(e).splitlines())}")
        else:
            raise Failure("sbatch --stasis=bogus was accepted")
        try:
            slurm.sbatch(script, "--stasis", user="nobody")
        except RuntimeError as e:
            check("ordinary users" in str(e), f"--stasis as nobody: {e}")
            print(f"refused: {' / '.join(str(e).splitlines())}")
        else:
            raise Failure("sbatch --stasis as nobody was accepted")
        # Past sbatch (root submits it with --uid), slurmstepd refuses it
        # too: the job fails and its error file says why.
        nobody = slurm.dir / "nobody"
        nobody.mkdir()
        os.chown(nobody, 65534, 65534)
        job = slurm.sbatch(
            script, "--stasis", "--uid=nobody", f"-o{nobody}/out", f"-e{nobody}/err"
        )
        state = slurm.wait_state(job, {"FAILED", "COMPLETED"}, 60)
        err = (nobody / "err").read_text() if (nobody / "err").exists() else ""
        check(state == "FAILED", f"--stasis --uid=nobody: job {state}, want FAILED")
        check("ordinary users" in err, f"--uid=nobody: error file says {err!r}")
        print(f"refused in slurmstepd: {err.strip()}")
        # Without the option the plugin changes nothing, for root and others.
        job = slurm.sbatch(script, "-o/dev/null", user="nobody")
        slurm.wait_state(job, "COMPLETED", 60)


def case_srun(stasis: str, plugin: str) -> None:
    """srun in a --stasis job reads the option back from the job's
    environment (sbatch exports it as "(null)" when given without argument):
    the step runs, and is not wrapped (only the batch step is)."""
    with SlurmCluster(plugstack=plugstack(plugin, stasis)) as slurm:
        home = slurm.dir / "home"
        home.mkdir()
        out, err = slurm.dir / "job.out", slurm.dir / "job.err"
        script = (
            "#!/bin/bash\n"
            "srun -n1 /bin/sh -c 'echo step $STASIS_SPANK_ARGV0-'\n"
            "echo script done\n"
        )
        job = slurm.sbatch(
            script, "--stasis", f"--export=ALL,HOME={home}", f"-o{out}", f"-e{err}"
        )
        state = slurm.wait_state(job, {"COMPLETED", "FAILED"}, 60)
        text = out.read_text() if out.exists() else ""
        errs = err.read_text() if err.exists() else ""
        check(state == "COMPLETED", f"job {state}: {errs}")
        check(
            "step -" in text, f"the srun step did not run as itself: {text!r} {errs!r}"
        )
        check("script done" in text, f"the script did not finish: {text!r}")
        ckdir = home / ".stasis" / "jobs" / str(job)
        check("as session job-" in job_log(ckdir), "the batch step was not wrapped")


CASES = {
    "preempt": case_preempt,
    "preempt_cgroup": case_preempt_cgroup,
    "refused": case_refused,
    "srun": case_srun,
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--stasis", required=True)
    p.add_argument("--plugin", required=True, help="the built stasis.so")
    p.add_argument("case", choices=sorted(CASES))
    args = p.parse_args()
    stasis = str(Path(args.stasis).resolve())
    plugin = str(Path(args.plugin).resolve())
    return run_case(args.case, lambda: CASES[args.case](stasis, plugin))


if __name__ == "__main__":
    sys.exit(main())
