"""A real one-node Slurm cluster on localhost (Debian's slurm-wlm and munge), started as root in a
throw-away folder: its own munge key and socket, its own ports and state, stopped after.

Jobs see the cluster through SLURM_CONF (set in `Cluster.env`), so nothing under /etc is written.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

CONF = """\
ClusterName=nas
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge.sock
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait={kill_wait}
SchedulerParameters=sched_interval=1
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def available() -> bool:
    """Whether Slurm and munge are installed here, and this process may start them (root)."""
    return all(shutil.which(p) for p in ("slurmctld", "slurmd", "sbatch", "munged")) and os.geteuid() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    base: Path
    conf: Path

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm's commands (sbatch, squeue, scancel, ...) to reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> str:
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stdout}{done.stderr}")
        return done.stdout

    def sbatch(self, *args: str) -> str:
        """Submit a job; its id."""
        return self.run("sbatch", "--parsable", *args).strip().split(";")[0]

    def jobs(self) -> list[tuple[str, str]]:
        """(job id, state) of each job or array task the controller still knows."""
        out = self.run("squeue", "--noheader", "--array", "--states=all", "--format=%i %T")
        return [tuple(line.split()[:2]) for line in out.splitlines() if line.strip()]  # type: ignore[misc]

    def wait_idle(self, timeout: float) -> None:
        """Wait until no job is pending or running."""
        deadline = time.monotonic() + timeout
        while any(state in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING") for _, state in self.jobs()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still there after {timeout} s: {self.jobs()}\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        return "".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.base.glob("slurm*.log")))


def _start_munge(base: Path) -> None:
    key = base / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={base}/munge.sock",
                    f"--pid-file={base}/munged.pid", f"--log-file={base}/munged.log",
                    f"--seed-file={base}/munged.seed"], check=True, capture_output=True)


def _wait_node_idle(cluster: Cluster, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = cluster.run("sinfo", "--noheader", "--format=%T", check=False).strip()
        if state in ("idle", "mixed", "allocated"):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Slurm node did not come up ({state!r}):\n{cluster.logs()}")
        time.sleep(0.3)


def _stop(base: Path) -> None:
    for name in ("slurmd", "slurmctld", "munged"):
        pid_file = base / f"{name}.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            continue
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)


@contextmanager
def slurm_cluster(kill_wait: int = 10) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd (one node, this machine's cores) and yield the cluster."""
    base = Path(tempfile.mkdtemp(prefix="nas-slurm-"))
    base.chmod(0o755)
    (base / "state").mkdir()
    (base / "spool").mkdir()
    conf = base / "slurm.conf"
    conf.write_text(CONF.format(host=socket.gethostname().split(".")[0], base=base, ctld_port=_free_port(),
                                d_port=_free_port(), cpus=os.cpu_count() or 1, kill_wait=kill_wait))
    cluster = Cluster(base, conf)
    try:
        _start_munge(base)
        subprocess.run(["slurmctld", "-f", str(conf), "-c", "-i"], env=cluster.env, check=True, capture_output=True)
        subprocess.run(["slurmd", "-f", str(conf)], env=cluster.env, check=True, capture_output=True)
        _wait_node_idle(cluster)
        yield cluster
    finally:
        _stop(base)
        shutil.rmtree(base, ignore_errors=True)
