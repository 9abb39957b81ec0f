"""A real Slurm on this machine for the tests: munged, slurmctld and slurmd.

    with SlurmCluster(grace_time=40) as slurm:
        job = slurm.sbatch(script, "--partition=low")
        slurm.wait_state(job, "RUNNING")

Everything lives in one temporary directory (slurm.conf, munge key and
socket, state save, spool, logs). Nothing is read from or written to
/etc/slurm, /etc/munge or /run/munge, so the tests never touch a site's own
Slurm. The daemons run in the foreground (-D, -F) as children of the test;
on exit (also on an exception, a failed assertion, SIGINT or SIGTERM) every
job is cancelled, every slurmstepd of this cluster, the daemons and any
stasis session left in the cluster's STASIS_STATE_DIR are killed, and the
directory is removed.

Measured here (Debian 12, Slurm 22.05.8, no systemd): see
integrations/slurm/README.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Callable, Iterator, Optional


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raise_exit(signum: int, frame: Optional[FrameType]) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the test through its finally blocks, like ^C."""
    old = {s: signal.signal(s, _raise_exit) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def stasis_job_argv(py: str, stasis_job: Path, stasis: str, *options: str) -> list[str]:
    """stasis-job in exit-code mode (exit 85 after a checkpoint, what a
    requeueing wrapper looks for) with OPTIONS; the caller appends "--" and
    the job's command."""
    return [
        py,
        str(stasis_job),
        "--stasis",
        stasis,
        "--checkpoint-exit-code",
        "85",
        *options,
    ]


class SlurmCluster:
    """One slurmctld and NODES slurmd (n1, n2, ...) on 127.0.0.1.

    Partitions: `low` (default, PreemptMode=REQUEUE, GraceTime=grace_time)
    and `high` (PriorityTier 10, preempts low).
    """

    def __init__(
        self,
        nodes: int = 1,
        cpus: int = 2,
        grace_time: int = 40,
        kill_wait: int = 30,
        cred_expire: int = 10,
        proctrack: str = os.environ.get("STASIS_SLURM_PROCTRACK", "linuxproc"),
        slurmd_timeout: int = 30,
        keep: bool = False,
        plugstack: Optional[str] = None,
    ) -> None:
        self.nodes = [f"n{i + 1}" for i in range(nodes)]
        self.cpus = cpus
        self.grace_time = grace_time
        self.kill_wait = kill_wait
        self.cred_expire = cred_expire
        self.proctrack = proctrack
        self.slurmd_timeout = slurmd_timeout
        self.keep = keep
        self.plugstack = plugstack  # a plugstack.conf line (SPANK plugins)
        self.dir = Path(tempfile.mkdtemp(prefix="stasis-slurm-"))
        os.chmod(self.dir, 0o755)  # jobs of ordinary users read the conf
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.socket"
        self.state_dir = self.dir / "stasis-sessions"  # STASIS_STATE_DIR of the jobs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = dict(os.environ)
        self.env["SLURM_CONF"] = str(self.conf)
        self.env["STASIS_STATE_DIR"] = str(self.state_dir)
        # Job ids of a run are random, so names derived from them (sessions,
        # cgroups) never meet those of another run on the machine.
        self.first_job_id = random.randrange(100000, 900000)

    # -- set-up -------------------------------------------------------------

    def __enter__(self) -> "SlurmCluster":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc is not None:
            self.dump_logs()
        self.stop()

    def _start(self) -> None:
        for sub in ("munge", "state", "spool", "log", "stasis-sessions"):
            (self.dir / sub).mkdir(mode=0o755)
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.procs["munged"] = subprocess.Popen(
            [
                "munged",
                "-F",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.dir / 'munge' / 'munged.pid'}",
                f"--seed-file={self.dir / 'munge' / 'munged.seed'}",
                f"--log-file={self.dir / 'log' / 'munged.log'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait(lambda: self.munge_socket.exists(), 10, "munged's socket")
        self._write_conf()
        log = self.dir / "log"
        self.procs["slurmctld"] = subprocess.Popen(
            ["slurmctld", "-D", "-i", "-f", str(self.conf)],
            env=self.env,
            stdout=open(log / "slurmctld.out", "wb"),
            stderr=subprocess.STDOUT,
        )
        for node in self.nodes:
            self.procs[f"slurmd-{node}"] = subprocess.Popen(
                ["slurmd", "-D", "-f", str(self.conf), "-N", node],
                env=self.env,
                stdout=open(log / f"slurmd-{node}.out", "wb"),
                stderr=subprocess.STDOUT,
            )
        self._wait(self._all_idle, 60, "the nodes to be idle")

    def _write_conf(self) -> None:
        d = self.dir
        self.ctld_port = free_port()
        lines = [
            "ClusterName=stasistest",
            f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: a requeued job is eligible again cred_expire+1 s
            # after it ended (default 120 s).
            f"AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}/%n",
            f"SlurmctldPidFile={d / 'state' / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'spool'}/slurmd-%n.pid",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log'}/slurmd-%n.log",
            "SlurmctldDebug=debug",
            "SlurmdDebug=debug",
            f"ProctrackType=proctrack/{self.proctrack}",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=2",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "PreemptType=preempt/partition_prio",
            "PreemptMode=REQUEUE",
            "SlurmctldParameters=preempt_send_user_signal",
            "JobRequeue=1",
            f"KillWait={self.kill_wait}",
            "ReturnToService=2",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MinJobAge=600",
            f"FirstJobId={self.first_job_id}",
            f"PlugStackConfig={d / 'plugstack.conf' if self.plugstack else '/dev/null'}",
            "InactiveLimit=0",
            f"SlurmdTimeout={self.slurmd_timeout}",
        ]
        nodes = ",".join(self.nodes)
        for node in self.nodes:
            lines.append(
                f"NodeName={node} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 "
                f"Port={free_port()} CPUs={self.cpus} RealMemory=4000 State=UNKNOWN"
            )
        lines.append(
            f"PartitionName=low Nodes={nodes} Default=YES MaxTime=INFINITE "
            f"PriorityTier=1 PreemptMode=REQUEUE GraceTime={self.grace_time} "
            "OverSubscribe=NO State=UP"
        )
        lines.append(
            f"PartitionName=high Nodes={nodes} MaxTime=INFINITE PriorityTier=10 "
            "PreemptMode=OFF OverSubscribe=NO State=UP"
        )
        self.conf.write_text("\n".join(lines) + "\n")
        if self.plugstack:
            (d / "plugstack.conf").write_text(self.plugstack + "\n")
            os.chmod(d / "plugstack.conf", 0o644)
        # proctrack/cgroup: cgroup/v1's freezer here (a hybrid hierarchy);
        # slurmd finds cgroup.conf next to slurm.conf.
        (d / "cgroup.conf").write_text(
            "CgroupPlugin=autodetect\nCgroupMountpoint=/sys/fs/cgroup\nConstrainCores=no\n"
        )
        os.chmod(self.conf, 0o644)

    # -- helpers ------------------------------------------------------------

    @staticmethod
    def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.3)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}")

    def run(self, *argv: str, check: bool = True) -> str:
        """Runs a Slurm client command against this cluster; returns stdout."""
        p = subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=60
        )
        if check and p.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}"
            )
        return p.stdout

    def _all_idle(self) -> bool:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {p.returncode}:\n{self.logs_tail()}"
                )
        out = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False)
        states = dict(line.split() for line in out.splitlines() if line.strip())
        return all(states.get(n, "").startswith("idle") for n in self.nodes)

    def sbatch(self, script: str, *args: str, user: Optional[str] = None) -> int:
        """Submits SCRIPT (text) with ARGS; returns the job id."""
        path = self.dir / f"job-{time.monotonic_ns()}.sh"
        path.write_text(script)
        os.chmod(path, 0o755)
        argv = ["sbatch", "--parsable", *args, str(path)]
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        return int(self.run(*argv).strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict ({} once the job is forgotten)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        fields: dict[str, str] = {}
        for tok in out.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                fields.setdefault(k, v)
        return fields

    def state(self, job_id: int) -> str:
        return self.job(job_id).get("JobState", "")

    def wait_state(
        self, job_id: int, states: str | set[str], timeout: float = 120
    ) -> str:
        wanted = {states} if isinstance(states, str) else states
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            last = self.state(job_id)
            if last in wanted:
                return last
            time.sleep(0.5)
        raise TimeoutError(
            f"job {job_id}: state {last}, not {wanted} after {timeout} s"
        )

    def logs_tail(self, lines: int = 40) -> str:
        out = []
        for f in sorted((self.dir / "log").glob("*")):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f.name}\n" + "\n".join(text))
        return "\n".join(out)

    def dump_logs(self) -> None:
        print(self.logs_tail(), flush=True)

    # -- tear-down ----------------------------------------------------------

    def our_stepds(self) -> list[int]:
        """slurmstepd processes of this cluster: they hold our log files."""
        pids = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                if (p / "comm").read_text().strip() != "slurmstepd":
                    continue
                for fd in (p / "fd").iterdir():
                    if os.readlink(fd).startswith(str(self.dir)):
                        pids.append(int(p.name))
                        break
            except OSError:
                continue
        return pids

    def _job_processes(self) -> list[int]:
        """Every process a job of this cluster started (it has our SLURM_CONF
        in its environment; a restored process too, whose environment is in
        its restored memory), but not the daemons."""
        mark = f"SLURM_CONF={self.conf}".encode() + b"\0"
        daemons = {p.pid for p in self.procs.values()} | {os.getpid()}
        pids = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or int(p.name) in daemons:
                continue
            with contextlib.suppress(OSError):
                if mark in (p / "environ").read_bytes():
                    pids.append(int(p.name))
        return pids

    def processes_of_job(self, job_id: int) -> list[int]:
        """Every process (stasis sessions included) that a run of JOB_ID
        started, found by the SLURM_JOB_ID in its environment."""
        mark = f"SLURM_JOB_ID={job_id}".encode() + b"\0"
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit() and int(p.name) != os.getpid():
                with contextlib.suppress(OSError):
                    env = (p / "environ").read_bytes()
                    if env.startswith(mark) or b"\0" + mark in env:
                        pids.append(int(p.name))
        return pids

    def _kill_sessions(self) -> None:
        """Kills what is left of stasis sessions the jobs started."""
        for f in self.state_dir.glob("*.json") if self.state_dir.exists() else []:
            try:
                meta = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            cg = meta.get("cgroup") or ""
            if cg and os.path.isdir(cg):
                with contextlib.suppress(OSError):
                    Path(cg, "cgroup.kill").write_text("1")
                for _ in range(50):
                    with contextlib.suppress(OSError):
                        os.rmdir(cg)
                    if not os.path.isdir(cg):
                        break
                    time.sleep(0.1)
            pid = meta.get("init_pid") or meta.get("init_host_pid")
            if isinstance(pid, int) and pid > 1:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self.run("scancel", "--full", "--user=root", check=False)
                self.run("scancel", "--full", "--state=PENDING", check=False)
                for line in self.run("squeue", "-h", "-o", "%i", check=False).split():
                    self.run("scancel", "--full", line, check=False)
        for pid in self.our_stepds():
            # Kill the stepd's process group and its children (linuxproc
            # leaves escaped processes alone).
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self._kill_sessions()
        order = [n for n in self.procs if n.startswith("slurmd")] + [
            n for n in ("slurmctld", "munged") if n in self.procs
        ]
        for name in order:
            p = self.procs[name]
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for pid in self.our_stepds():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in self._job_processes():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self._kill_sessions()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
