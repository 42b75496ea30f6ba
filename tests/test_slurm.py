"""The harness on a real SLURM cluster (a throwaway single node from scripts/ci_slurm.sh): a training job runs as an
sbatch job and is classified ok; a job whose time limit turns out too short is signalled by slurmctld, checkpoints,
is requeued and resumes to the end; and `harness.search --executor slurm` runs a whole (tiny) search on it.

Skipped unless NANORESEARCH_TEST_SLURM is set (SLURM_CONF must point at the cluster); a failure instead when
NANORESEARCH_REQUIRE_SLURM=1 (CI) and the cluster is missing or not usable."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.catalog import Rung
from harness.executors import Executor, SlurmOptions
from harness.jobs import Job, TrainingJob
from harness.runs import read_outcome
from tests.conftest import tiny_tier

REPO = Path(__file__).resolve().parents[1]
# tests/test_train.py's TINY as overrides: seconds per run on 2 cores. Evaluation only at the end.
TINY = dict(vocab_size=1024, sequence_len=64, head_dim=32, device_batch_size=4, total_batch_size=256,
            eval_tokens=2048, eval_every=0, log_every=5, warmup_steps=2)
ENV = {"OMP_NUM_THREADS": "1"}

# Every test here starts training subprocesses (model.train as SLURM jobs, harness.search): deselect with -m "not slow" for a quick loop.
pytestmark = pytest.mark.slow


def slurm_problem(partition: str) -> str | None:
    """Why this machine's SLURM cluster cannot run our jobs, or None when it can."""
    if not partition:
        return "NANORESEARCH_TEST_SLURM_PARTITION is unset (source scripts/ci_slurm.sh)"
    missing = [c for c in ("sbatch", "srun", "scontrol", "sinfo") if shutil.which(c) is None]
    if missing:
        return f"SLURM client commands not on PATH: {', '.join(missing)}"
    try:
        proc = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%a %T"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 10 s (is slurmctld running? is SLURM_CONF set?)"
    states = proc.stdout.split()
    if proc.returncode != 0 or len(states) < 2:
        return f"sinfo -p {partition} failed: {(proc.stderr or proc.stdout).strip()[:300] or 'no such partition'}"
    if states[0] != "up" or not any(s.rstrip("*") in ("idle", "mixed", "allocated", "completing") for s in states[1::2]):
        return f"partition {partition} has no usable node: {' '.join(states)}"
    return None


@pytest.fixture(scope="module")
def partition() -> str:
    required = os.environ.get("NANORESEARCH_REQUIRE_SLURM") == "1"
    if not os.environ.get("NANORESEARCH_TEST_SLURM"):
        problem = "NANORESEARCH_TEST_SLURM is unset: no SLURM cluster to test on (source scripts/ci_slurm.sh)"
    else:
        problem = slurm_problem(os.environ.get("NANORESEARCH_TEST_SLURM_PARTITION", ""))
    if problem:
        if required:
            pytest.fail(f"NANORESEARCH_REQUIRE_SLURM=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    return os.environ["NANORESEARCH_TEST_SLURM_PARTITION"]


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    tiny_tokenizer.save(path)
    return path


def tiny_job(run_dir: Path, rung: Rung, shared_data: Path, tokenizer_dir: Path) -> Job:
    return Job(experiment_id="slurmtest", rung=rung, slot=0, seed=0, run_dir=run_dir, train_tier="cpu",
               overrides=dict(TINY), data=str(shared_data), tokenizer=str(tokenizer_dir), timeout_s=300)


def training_ignores_usr2(tmp_path: Path) -> bool:
    """Whether TrainingJob starts its command with SIGUSR2 ignored: slurmstepd delivers the time-limit warning
    (--signal=USR2@120) to every process of the job step, and USR2's default action would kill the training before
    TrainingJob.checkpoint could stop it gracefully."""
    probe = tmp_path / "usr2-probe"
    TrainingJob([sys.executable, "-c", "import signal; print('SIGUSR2 ignored:', signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN)"],
                str(probe), 60)()
    return "SIGUSR2 ignored: True" in (probe / "train.log").read_text()


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (there is no sacct without an accounting database)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=20).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def scontrol_update(job_id: str, *fields: str) -> None:
    subprocess.run(["scontrol", "update", f"JobId={job_id}", *fields], check=True, capture_output=True, timeout=20)


def wait_until(what: str, ready, timeout: float, job_id: str, poll_s: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(poll_s)
    info = job_info(job_id)
    subprocess.run(["scancel", job_id], timeout=20)
    pytest.fail(f"SLURM job {job_id}: {what} not seen after {timeout:.0f}s "
                f"(JobState={info.get('JobState')} Reason={info.get('Reason')} Restarts={info.get('Restarts')})")


def finished(job_id: str) -> dict[str, str] | None:
    """The job's final scontrol record once SLURM has it out of RUNNING/COMPLETING (it writes the result first)."""
    info = job_info(job_id)
    return info if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") else None


def requeued(job_id: str) -> bool:
    """Requeued and back in the queue: Restarts counts the requeue at once, but the job is PENDING (with its requeue
    hold-off set) only once its first launch has ended."""
    info = job_info(job_id)
    return info.get("Restarts") == "1" and info.get("JobState") == "PENDING"


def launches(log: Path) -> int:
    return log.read_text().count("\n$ ") if log.exists() else 0


def test_a_training_job_runs_as_a_slurm_job(partition, tmp_path, shared_data, tokenizer_dir):
    job = tiny_job(tmp_path / "run", Rung(name="d1", depth=1, seeds=1, num_iterations=20), shared_data, tokenizer_dir)
    executor = Executor("slurm", tmp_path / "submitit", SlurmOptions(partition=partition), env=ENV)
    handle = executor.submit(job)
    assert handle.job_id.isdigit(), handle.job_id  # sbatch's job id, not a local pid
    wait_until("the result", handle.done, 180, handle.job_id)

    info = wait_until("the end of the job", lambda: finished(handle.job_id), 60, handle.job_id)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", info
    assert info["Partition"] == partition and info["Restarts"] == "0" and info["NumCPUs"] == "1", info
    assert info["TimeLimit"] == "00:10:00", info  # the job's 300 s timeout + 5 min of slack, in whole minutes
    # submitit read its environment from SLURM's variables inside the job (SLURM_JOB_ID among them).
    assert f"JobEnvironment(job_id={handle.job_id}," in handle.stdout(), handle.stdout()[-2000:]
    returned = handle.result()
    assert returned["returncode"] == 0 and not returned["timed_out"], returned
    result = json.loads((job.run_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["steps"] == 20, result
    outcome = read_outcome(job, returned)
    assert outcome.status == "ok" and outcome.val_bpb == result["val_bpb"], (outcome.status, outcome.reason)
    assert launches(job.run_dir / "train.log") == 1


def test_a_job_out_of_time_is_signalled_checkpointed_requeued_and_resumed(partition, tmp_path, shared_data, tokenizer_dir):
    # Seconds of training, over two launches. slurmctld checks time limits every 30 s (measured: the signal came
    # 3-29 s after the limit was cut), so the first launch trains at most ~30 s: more than that is left to resume.
    budget = 36.0
    job = tiny_job(tmp_path / "run", Rung(name="d1", depth=1, seeds=1, time_budget=budget), shared_data, tokenizer_dir)
    assert training_ignores_usr2(tmp_path)
    executor = Executor("slurm", tmp_path / "submitit", SlurmOptions(partition=partition), env=ENV)
    handle = executor.submit(job)
    log = job.run_dir / "train.log"
    wait_until("a training progress line", lambda: log.exists() and f"% of {budget:g}s" in log.read_text(), 120, handle.job_id, 0.2)

    # The time limit turns out too short: 2 minutes is within the 120 s warning the executor asks for (--signal
    # USR2@120), so slurmctld sends USR2 at its next time-limit check (every 30 s), and the job still has > 1 minute
    # before SLURM would kill it. TrainingJob.checkpoint stops model.train with SIGTERM (checkpoint saved) and submitit
    # requeues the job.
    scontrol_update(handle.job_id, "TimeLimit=2")
    wait_until("the requeue", lambda: requeued(handle.job_id), 60, handle.job_id, 0.2)
    first = json.loads((job.run_dir / "result.json").read_text())
    assert first["status"] == "timeout" and 0 < first["total_training_time"] < budget, first
    # The requeued job waits out SLURM's requeue hold-off (2 minutes, set when it went back to PENDING) and would get
    # the same short limit: give it a long enough one and let it start soon, as an operator would. Not at once:
    # slurmd revoked the first launch's credential, with one-second resolution, and refuses a relaunch in the same
    # second ("Job credential revoked", seen when starting within 0.3 s).
    scontrol_update(handle.job_id, "TimeLimit=10", "StartTime=now+3")
    wait_until("the result", handle.done, 150, handle.job_id)

    text = log.read_text()
    assert launches(log) == 2 and f"resumed at step {first['steps']}" in text, text[-3000:]
    assert "Caught signal SIGUSR2" in handle.stdout(), handle.stdout()[-3000:]
    info = wait_until("the end of the job", lambda: finished(handle.job_id), 60, handle.job_id)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", info
    returned = handle.result()
    assert returned["returncode"] == 0, returned
    result = json.loads((job.run_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["total_training_time"] >= budget and result["steps"] > first["steps"], result
    assert read_outcome(job, returned).status == "ok"


TINY_TIER = tiny_tier("test tier: depth 1, a few dozen steps", """
[statistics]
alpha = 0.05
min_effect = 0.0
max_seeds = 2
[[rungs]]
name = "d1"
depth = 1
num_iterations = 20
seeds = 2
""")


def test_a_search_runs_on_slurm_end_to_end(partition, tmp_path, shared_data, tiny_tokenizer):
    # tiny_tokenizer: the cached tokenizer the tier's settings resolve to.
    tier = tmp_path / "tiny.toml"
    tier.write_text(TINY_TIER)
    db = f"sqlite:///{tmp_path / 'lb.db'}"
    cmd = [sys.executable, "-m", "harness.search", "--db", db, "--runs-dir", str(tmp_path / "runs"),
           "--data", str(shared_data), "--executor", "slurm", "--slurm-partition", partition, "--tier", str(tier),
           "--rungs", "1", "--trials", "1", "--seeds", "2", "--parallel", "2", "--proposer", "optuna", "--name", "onslurm"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "search 'onslurm' finished" in proc.stdout, proc.stdout[-3000:]

    from leaderboard import Store
    runs = Store(db).runs()
    assert len(runs) >= 4 and all(r["status"] == "ok" for r in runs), runs  # baseline and candidate, 2 seeds each
    # Every run was a SLURM job that completed: submitit keeps one folder per SLURM job id.
    job_ids = [p.name for p in (tmp_path / "runs" / "onslurm" / "submitit").iterdir() if p.is_dir()]
    assert len(job_ids) == len(runs) and all(j.isdigit() for j in job_ids), job_ids
    for job_id in job_ids:
        info = wait_until("the end of the job", lambda j=job_id: finished(j), 60, job_id)
        assert info["JobState"] == "COMPLETED" and info["Partition"] == partition, info
