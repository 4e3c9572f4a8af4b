"""A real one-node SLURM cluster on loopback for the ``famlab sweep submit`` tests.

munged, slurmctld and slurmd run as root in the foreground, each a child of the test process, with
every file (munge key and socket, slurm.conf, state, spool, logs) in a fresh temporary folder and
free ports, so nothing of the machine's own configuration is read or changed. The node has 4 CPUs
(more than a small CI machine: ``SlurmdParameters=config_overrides``) so two one-CPU workers and their
batch steps always fit; tasks run as root. Clients (sbatch, squeue, scancel, and submitit) find the
cluster through ``$SLURM_CONF``, set for the session. The binaries come from Debian's ``slurm-wlm`` and
``munge`` packages (``make slurm`` installs them); without them the tests are skipped, unless
``FAMLAB_REQUIRE_SLURM=1`` (set by ``.ci/run``), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

NODE = "famlabnode"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}",) if os.path.exists(p)), None)


class SlurmCluster:
    def __init__(self) -> None:
        missing = [b for b in BINARIES if _which(b) is None]
        if missing or os.geteuid() != 0:
            why = f"SLURM binaries not found ({', '.join(missing)}; run `make slurm`)" if missing else "needs root"
            if os.environ.get("FAMLAB_REQUIRE_SLURM") == "1":
                pytest.fail(why)
            pytest.skip(why)
        self.root = Path(tempfile.mkdtemp(prefix="famlab-slurm-"))
        self.root.chmod(0o755)  # munge's socket folder must be searchable by every user
        self.conf = self.root / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _spawn(self, *cmd: str) -> None:
        with open(self.root / f"{Path(cmd[0]).name}.out", "w") as log:  # the child keeps its own descriptor
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env()))

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _start(self) -> None:
        r = self.root
        for sub in ("munge", "state", "spool", "log"):
            (r / sub).mkdir(mode=0o755)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        socket_path = r / "munge" / "munge.socket"
        self._spawn(
            _which("munged"), "-F", "-f", f"--socket={socket_path}", f"--key-file={key}",
            f"--log-file={r / 'munge' / 'munged.log'}", f"--pid-file={r / 'munge' / 'munged.pid'}",
            f"--seed-file={r / 'munge' / 'munged.seed'}",
        )  # fmt: skip
        self._wait(socket_path.exists, "munged's socket")
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(
            f"""ClusterName=famlabtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path},cred_expire=10
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=30
MinJobAge=300
InactiveLimit=0
Waittime=0
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs=4 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""
        )
        self._spawn(_which("slurmctld"), "-D", "-i", "-f", str(self.conf))
        self._spawn(_which("slurmd"), "-D", "-N", NODE, "-f", str(self.conf))
        self._wait(self._idle, "the node idle in sinfo")

    def _idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split()
        return out == ["idle"]

    def _wait(self, predicate, what: str, timeout: float = 60.0) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if predicate():
                return
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}: {self.logs()}")
            time.sleep(0.2)
        raise RuntimeError(f"SLURM: timed out waiting for {what}: {self.logs()}")

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([_which(cmd[0]), *cmd[1:]], capture_output=True, text=True, env=self.env(), check=check)

    def logs(self) -> str:
        texts = [f.read_text(errors="replace")[-1500:] for f in sorted(self.root.glob("**/*.log")) if f.is_file()]
        texts += [f.read_text(errors="replace")[-500:] for f in sorted(self.root.glob("*.out"))]
        return "\n".join(texts)

    def tasks(self, array: str) -> dict[str, str]:
        """The tasks of a job array the controller still knows: ``{"ARRAY_TASK": state}``."""
        out = self.run("squeue", "-h", "-r", "-t", "all", "-j", array, "-o", "%i %T", check=False).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def stop(self) -> None:
        if self.conf.exists():
            self.run("scancel", "--full", "--user", "root", check=False)  # only this cluster's jobs
        for p in reversed(self.procs):  # slurmd, slurmctld, munged: each started by this fixture
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(self.root, ignore_errors=True)
