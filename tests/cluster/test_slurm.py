"""cluster/slurm/gmt-ray.sbatch under a real Slurm: a single-node cluster brought up here from
Debian's packages (slurm-wlm, munge), owned by the test and stopped at its end, runs the quick
start shrunk by --set overrides through ``sbatch``; the job is then requeued once a trial has
finished, and must continue the same sweep.

What stays untested: several nodes (the workers' srun steps, the MLflow server on the head's
network address), GPUs, and a site's own Slurm configuration (cgroups, task binding, accounting).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "cluster" / "slurm" / "gmt-ray.sbatch"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "srun", "sinfo", "scancel")

# The quick start in miniature: 2 gmt trials of 4 steps at once, judged on 16 problems.
SHRUNK = ["--set", "name=slurm-quickstart", "--set", "search.methods=[gmt]", "--set", "search.num_samples=2",
          "--set", "train.max_steps=4", "--set", "train.eval_every=4", "--set", "train.checkpoint_every=4",
          "--set", "train.log_every=2", "--set", "data.arithmetic.train_size=64",
          "--set", "data.arithmetic.validation_size=16", "--set", "data.arithmetic.test_size=16",
          "--set", "eval.max_samples=16", "--set", "mlflow.system_metrics=false"]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the test's slurmd must run as root"
    absent = [tool for tool in (*DAEMONS, *CLIENTS) if shutil.which(tool, path=f"{os.environ['PATH']}:/usr/sbin") is None]
    return f"not installed: {', '.join(absent)} (Debian's slurm-wlm and munge)" if absent else None


class SlurmCluster:
    """munged, slurmctld and slurmd for this machine alone, in ``root``: their own munge key and
    socket, their own SLURM_CONF, state and spool directories and free ports, so that they meet
    no other Slurm or munge here; in the foreground (``-F``/``-D``), children of this process."""

    def __init__(self, root: Path):
        self.root = root
        self.node = socket.gethostname()
        self.processes: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
        self.env.pop("MLFLOW_TRACKING_URI", None)  # the job starts its own MLflow server

    def start(self) -> "SlurmCluster":
        root = self.root
        for sub in ("munge", "state", "spool", "log"):
            (root / sub).mkdir(mode=0o700)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = root / "munge" / "munge.socket"
        self._spawn("munged", "-F", "--force", "--num-threads=4", f"--socket={socket_path}", f"--key-file={key}",
                    f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
                    f"--seed-file={root / 'munge' / 'seed'}")
        self.wait_until(lambda: socket_path.exists(), 20, "munged's socket")
        (root / "slurm.conf").write_text(f"""\
ClusterName=gmttest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again 10 s later (Slurm's default: 120 s); KillWait: a
# cancelled step's processes are killed 5 s after its SIGTERM (default: 30 s); sched_interval:
# the main scheduler looks at pending jobs every 2 s (default: 60 s): a requeued job becomes
# eligible by the clock alone, which wakes no other scheduling pass, so it waited for that one
AuthInfo=socket={socket_path},cred_expire=10
KillWait=5
SchedulerParameters=sched_interval=2
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=1024 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        self._spawn("slurmctld", "-D", "-i")
        self._spawn("slurmd", "-D", "-N", self.node)
        self.wait_until(lambda: self.run("sinfo", "-h", "-N", "-o", "%T").stdout.strip() == "idle", 60, "an idle node")
        return self

    def run(self, *command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, cwd=cwd, capture_output=True, text=True, timeout=60)

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, ExitCode, Restarts, ...)."""
        text = self.run("scontrol", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def stop(self) -> None:
        if any(p.poll() is None for p in self.processes):
            self.run("scancel", "--user", "root")
            try:
                self.wait_until(lambda: not self.run("squeue", "-h").stdout.strip(), 60, "no jobs left")
            except (AssertionError, subprocess.SubprocessError):
                pass
        for process in reversed(self.processes):  # slurmd, slurmctld, then munged
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _spawn(self, program: str, *args: str) -> None:
        log = open(self.root / "log" / f"{program}.out", "w")
        executable = shutil.which(program, path=f"{os.environ['PATH']}:/usr/sbin")  # daemons live in /usr/sbin
        self.processes.append(subprocess.Popen([executable, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def wait_until(self, predicate, timeout: float, what: str):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.processes):
                logs = "\n".join(f.read_text()[-2000:] for f in sorted((self.root / "log").glob("*")))
                raise AssertionError(f"a Slurm daemon exited while waiting for {what}:\n{logs}")
            value = predicate()
            if value:
                return value
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def slurm(tmp_path):
    reason = _missing()
    if reason:
        pytest.skip(f"Slurm cannot run here: {reason}")
    cluster = SlurmCluster(tmp_path / "slurm")
    (tmp_path / "slurm").mkdir()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def _trial_runs(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string="tags.`gmt_ray.role` = 'trial'")


def _server_uri(log: Path) -> str | None:
    """The job's MLflow server, once the sweep has begun logging to it."""
    text = log.read_text() if log.exists() else ""
    found = re.search(r"^sweep: \d+ trials; MLflow parent run \w+ in (http://\S+)$", text, re.M)
    return found and found.group(1)


def test_sbatch_runs_the_quick_start_and_a_requeued_job_resumes_it(slurm, tmp_path):
    submit_dir = tmp_path / "submit"  # the "shared file system": paths below are relative to it
    submit_dir.mkdir()
    shutil.copy(ROOT / "experiments" / "quickstart.yaml", submit_dir / "experiment.yaml")
    slurm.env["PATH"] = f"{Path(sys.executable).parent}:{slurm.env['PATH']}"  # python and ray, as activated
    # A requeued job's Ray stops at once: no 30 s drain of a node whose trials are killed anyway.
    slurm.env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    submitted = slurm.run("sbatch", "--parsable", str(SCRIPT), "experiment.yaml", *SHRUNK, cwd=submit_dir)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    log = submit_dir / f"gmt-ray-{job_id}.log"
    store = submit_dir / "mlflow.db"

    try:
        # Requeued once the first trials have finished: the job's Ray, MLflow and sweep are killed.
        server = slurm.wait_until(lambda: _server_uri(log), 180, "the sweep's start")
        finished = slurm.wait_until(lambda: [r for r in _trial_runs(server) if r.info.status == "FINISHED"], 180,
                                 "a finished trial")
        finished_before = {r.data.tags["gmt_ray.trial_id"]: r.info.run_id for r in finished}
        assert slurm.run("scontrol", "requeue", job_id).returncode == 0
        job = slurm.wait_until(lambda: (j := slurm.job(job_id)).get("Restarts") == "1"
                               and j.get("JobState") in ("COMPLETED", "FAILED") and j, 300, "the requeued job's end")
    except AssertionError as error:
        raise AssertionError(f"{error}; the job's log:\n{log.read_text()[-4000:] if log.exists() else '(none)'}") from None
    text = log.read_text()
    assert job["ExitCode"] == "0:0", text[-4000:]

    # Both runs of the job: a Ray head with the node's CPUs plus one, a server over ./mlflow.db.
    assert text.count(f"Ray on 1 node(s): the head on {slurm.node} (") == 2, text[-4000:]
    assert text.count(f"with {os.cpu_count() + 1} CPUs") == 2
    assert text.count(f"a server of this job's over {store}") == 2
    assert "requeued (restart 1): resuming the sweep" in text
    assert re.findall(r"the sweep exited with (\d+)", text)[-1] == "0"
    assert "stopping the Ray and MLflow this job started" in text[text.rindex("the sweep exited with"):]
    assert "2 trials, objective val_arithmetic_accuracy (max)" in text

    # MLflow: every trial once, finished, with its objective; the finished ones were not trained again.
    trials = _trial_runs(f"sqlite:///{store}")  # the job's server is gone: its store, as it left it
    assert sorted(r.data.tags["gmt_ray.trial_id"] for r in trials) == sorted({r.data.tags["gmt_ray.trial_id"]
                                                                              for r in trials})
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    assert all("val_arithmetic_accuracy" in r.data.metrics for r in trials)  # chosen on validation problems
    by_trial = {r.data.tags["gmt_ray.trial_id"]: r.info.run_id for r in trials}
    assert all(by_trial[trial] == run for trial, run in finished_before.items())
    # They ran at once: 2 x (1 CPU + a driver's 0.01) fit only with the extra logical CPU.
    first, second = sorted(trials, key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time
    assert (submit_dir / "mlartifacts").is_dir() and any((submit_dir / "mlartifacts").rglob("*"))
    assert (submit_dir / "runs" / "slurm-quickstart" / "optuna.journal").exists()

    # Only what the job started is gone, and all of it: no process of its Ray or MLflow server.
    import psutil

    ray_tmpdir = f"/tmp/gmt-ray-{job_id}"
    left = [p.info for p in psutil.process_iter(["pid", "cmdline"])
            if any(ray_tmpdir in part or str(store) in part for part in p.info["cmdline"] or [])]
    assert not left and not Path(ray_tmpdir).exists()


def test_the_script_stops_only_its_own_ray_and_finds_nothing_beside_itself():
    """Slurm runs a copy of the script from its spool directory, and a node may run other Rays."""
    commands = [line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#")]
    code = "\n".join(commands)
    assert "ray stop" not in code and "dirname" not in code and "$0" not in code
    directives = [line for line in SCRIPT.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --exclusive" in directives
    assert not [d for d in directives if re.search(r"--(partition|gres|gpus|mem|cpus-per-task)|-p |-c ", d)]
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
