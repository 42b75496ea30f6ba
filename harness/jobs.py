"""
A job is one training run: (experiment, rung, seed slot) -> one `python -m model.train` command and its run dir.

The harness never imports the training loop: a job is a plain process (`python -m model.train ...`, or
`torchrun --standalone --nproc_per_node=N -m model.train ...` when a rung asks for N devices), so crashes,
OOMs and NaNs stay contained and the same command runs locally, under torchrun and on SLURM. Every job passes
--resume: a job that is rerun (search restarted, SLURM requeue) continues from its checkpoint, and one that had
already finished returns at once.

`TrainingJob` is the callable submitit runs (locally or on a SLURM node). It supervises the command with a
wall-clock limit, and on a SLURM preemption/time-out signal it stops the run gracefully (model.train saves a
checkpoint on SIGTERM) and asks submitit to requeue it.

A job of a patched experiment runs in the patch's git worktree (`Job.workdir`), so `python -m model.train` imports
the patched `model`: its command goes through `python -m harness.sandbox --cwd WORKTREE --write RUN_DIR -- COMMAND`
(harness/sandbox.py: no network, nothing writable but the run dir), or, when the user gave up the sandbox with
--unsafe-patches, `python -m harness.jobs --cwd WORKTREE -- COMMAND`, which only changes directory. Both exec the
command (same process, so signals and the process group are unchanged). The command is self-describing that way: the
line in train.log reruns the same code by hand, and every executor runs it as is. After its training ends ok, a
patched job runs the sealed re-score of its final checkpoint (`python -m model.seal` with the same arguments, in the
same worktree and sandbox, the run dir read-only) and writes what it printed to RUN_DIR/sealed.json; harness/runs.py
judges the run by it.

Training never needs the agent's API credentials: they are removed from the environment of every job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from experiments.catalog import Rung
from harness import sandbox
from harness.experiment import format_set
from model.run_dir import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
# Credentials a training process never needs; kept out of its environment (and so out of run dirs and logs).
SECRET_ENV = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
SEALED = "sealed.json"  # a patched run's sealed re-score, written by the job (never by the sandboxed processes)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus `extra`, without the credentials in SECRET_ENV."""
    return {k: v for k, v in {**os.environ, **(extra or {})}.items() if k not in SECRET_ENV}


@dataclass(frozen=True)
class WandbLabels:
    """How a job's training run appears in Weights & Biases (`model.train --wandb`): grouped by its search (or
    speedrun track), its job type the experiment, tagged with rung, seed and role (baseline, null, candidate), so
    W&B's grouped curves and run comparison set the arms side by side without any setup there."""
    group: str
    experiment: str
    name: str
    tags: tuple[str, ...]

    def args(self) -> list[str]:
        return ["--wandb", "--wandb-group", self.group, "--wandb-job-type", self.experiment, "--wandb-name", self.name,
                *(arg for tag in self.tags for arg in ("--wandb-tag", tag))]


@dataclass
class Job:
    experiment_id: str
    rung: Rung
    slot: int                      # seed slot: pairs this run with the baseline's run on the same slot
    seed: int
    run_dir: Path
    train_tier: str
    overrides: dict = field(default_factory=dict)
    data: str | None = None
    tokenizer: str | None = None
    target: str | None = None
    timeout_s: float = 3600.0
    workdir: Path | None = None    # where the command runs (a patched experiment's worktree); None: the repo
    data_seed: int | None = None   # the data order, when it differs from the init seed (replicas)
    sandbox: bool = True           # a patched job runs in the sandbox (False only with --unsafe-patches)
    wandb: WandbLabels | None = None  # log the run to W&B (--wandb): training only, never the sealed re-score

    @property
    def key(self) -> tuple[str, str, int]:
        """The leaderboard's run key."""
        return (self.experiment_id, self.rung.name, self.seed)

    @property
    def patched(self) -> bool:
        return self.workdir is not None

    def command(self) -> list[str]:
        """The training command (wrapped to run in the worktree, sandboxed, for a patched job)."""
        args = ["-m", "model.train", *self.train_args(), *(self.wandb.args() if self.wandb else [])]
        if self.rung.nodes > 1:
            raise ValueError(f"rung {self.rung.name}: nodes={self.rung.nodes}: multi-node runs are not supported yet (expected 1)")
        if self.rung.devices > 1:
            torchrun = Path(sys.executable).with_name("torchrun")
            command = [str(torchrun), "--standalone", f"--nproc_per_node={self.rung.devices}", *args]
        else:
            command = [sys.executable, *args]
        return self.in_workdir(command, write=[self.run_dir])

    def seal_command(self) -> list[str] | None:
        """A patched job's sealed re-score of its final checkpoint (model/seal.py), run where its training ran but
        with nothing writable; None for a job of this checkout's own code."""
        if not self.patched:
            return None
        command = [sys.executable, "-m", "model.seal", *self.train_args(), "--world", str(self.rung.devices)]
        return self.in_workdir(command, write=[])

    def in_workdir(self, command: list[str], write: list[Path]) -> list[str]:
        if not self.patched:
            return command
        if self.sandbox:
            return sandbox.wrap(command, cwd=self.workdir, write=write)
        return [sys.executable, "-m", "harness.jobs", "--cwd", str(self.workdir), "--", *command]

    def train_args(self) -> list[str]:
        """The arguments of `model.train` (and of `model.seal`, which reads them the same way)."""
        args = ["--depth", str(self.rung.depth), "--tier", self.train_tier,
                "--out", str(self.run_dir), "--seed", str(self.seed),
                *(["--data-seed", str(self.data_seed)] if self.data_seed not in (None, self.seed) else []),
                *self.rung.horizon_args(), "--resume",
                "--experiment-id", self.experiment_id, "--rung", self.rung.name]
        if self.rung.fp8:  # before the experiment's own values, which win
            args += ["--set", "fp8=true"]
        for key, value in sorted(self.overrides.items()):
            args += ["--set", format_set(key, value)]
        if self.data:
            args += ["--data", self.data]
        if self.tokenizer:
            args += ["--tokenizer", self.tokenizer]
        target = self.target or self.rung.target
        if target:
            args += ["--target", target]
        if self.rung.core_every:
            args += ["--core-every", str(self.rung.core_every)]
        return args


def prepare_training_process(parent_pid: int) -> None:
    """In the training process, before exec.
    - Ignore SIGUSR2. SLURM sends its time-limit warning (submitit asks for USR2 before the limit) to every process
      of the job, and USR2's default action would kill model.train (and torchrun's workers: an ignored signal
      stays ignored across exec) before TrainingJob.checkpoint can stop it gracefully with SIGTERM, so nothing
      would be saved for the requeued job to resume.
    - On Linux, ask for SIGTERM when the process that started it (the TrainingJob) dies, however it dies:
      model.train then saves a checkpoint and exits instead of training on, unwatched, in its own session. If that
      process is already gone, exit at once."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(143)


@dataclass(frozen=True)
class Owner:
    """The process a local job belongs to (the search or speedrun that submitted it), told apart from a later
    process that reuses its pid by its start time (Linux /proc; elsewhere the pid alone)."""
    pid: int
    started: str | None

    @classmethod
    def this_process(cls) -> Owner:
        return cls(os.getpid(), process_start(os.getpid()))

    def alive(self) -> bool:
        if self.started is not None:
            stat = process_stat(self.pid)
            return stat is not None and stat[0] != "Z" and stat[19] == self.started
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def process_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first, start time 20th); None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def process_start(pid: int) -> str | None:
    stat = process_stat(pid)
    return stat[19] if stat else None


def training_pid(run_dir: str | Path) -> int | None:
    """The pid in a run dir's pid file, if that process is alive and is that run's training (its command line names
    the run dir: a pid reused by another program is never signalled). Without /proc, alive is enough."""
    try:
        pid = int(pid_file(run_dir).read_text().split()[0])
        os.killpg(pid, 0)
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return pid if not Path("/proc/self").exists() else None
    except OSError:
        return None
    return pid if str(run_dir) in cmdline else None


def write_pid_file(run_dir: str | Path, pid: int, owner: Owner | None) -> None:
    """The trainer's pid, then the pid and start time of the process its job belongs to (when it has one)."""
    fields = [str(pid)] + ([str(owner.pid), owner.started or "-"] if owner is not None else [])
    pid_file(run_dir).write_text(" ".join(fields))


def left_running(run_dir: str | Path) -> bool:
    """Is a trainer still running in the run dir for a session that is gone (its owner dead, or not recorded)? Such a
    trainer is stopped before the run dir's job is submitted again; one whose owner is alive (the same command
    running in another terminal) is left alone, and the new job waits for the run dir's lock instead."""
    if training_pid(run_dir) is None:
        return False
    try:
        fields = pid_file(run_dir).read_text().split()
        owner = Owner(int(fields[1]), None if fields[2] == "-" else fields[2]) if len(fields) >= 3 else None
    except (OSError, ValueError):  # gone meanwhile (the trainer ended), or not ours to read: nothing to stop
        return False
    return owner is None or not owner.alive()


def unwritable(directory: Path) -> str | None:
    """Why run dirs cannot go under `directory` (made if missing): a read-only or full file system, a file in the
    way, no permission; None if they can. Checked before a command records anything."""
    import tempfile
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        return f"cannot write there ({e.strerror or e})"
    return None


def last_line(text: str | None) -> str:
    """The last non-empty line of some output (at most 300 characters): what a one-line reason quotes."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:300]


def pid_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / ".train.pid"


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt, so `kill PID` (or a scheduler ending the session that
    runs a search) stops the jobs it started and saves their checkpoints as Ctrl-C does, instead of leaving them
    running unwatched. A process started in the background from a script ignores SIGINT, so SIGTERM is also the
    one way to stop it cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_training(run_dir: str | Path, grace_s: float = 60.0) -> bool:
    """SIGTERM the training process group of a run dir (model.train checkpoints and exits), SIGKILL after grace_s.
    True if something was running."""
    pid = training_pid(run_dir)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return False
    deadline = time.time() + grace_s
    while time.time() < deadline:
        try:
            os.killpg(pid, 0)
        except OSError:
            return True
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    return True


class TrainingJob:
    """Runs a job's command to completion under a wall-clock limit; returns what happened (the run dir holds
    the results). Picklable, so submitit can ship it to a worker process or a SLURM node.

    A local job has an `owner`, the search or speedrun that submitted it: when the owner dies, by any signal
    (SIGKILL included), the job stops its training within WATCH_S plus the checkpoint's time instead of training on
    unwatched. A SLURM job has none: it belongs to the cluster, and a resumed search adopts it."""

    WATCH_S = 0.5

    def __init__(self, command: list[str], run_dir: str, timeout_s: float, env: dict[str, str] | None = None,
                 owner: Owner | None = None, seal: list[str] | None = None):
        self.command, self.run_dir, self.timeout_s, self.env = command, run_dir, timeout_s, env or {}
        self.owner, self.seal = owner, seal
        self._proc: subprocess.Popen | None = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def __setstate__(self, state):
        self.__dict__.update({"owner": None, "seal": None, **state})  # pickled before jobs had owners (a SLURM requeue)
        self._proc = None

    @property
    def log_path(self) -> Path:
        return Path(self.run_dir) / "train.log"

    def __call__(self) -> dict:
        Path(self.run_dir).parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        sealed_path = Path(self.run_dir) / SEALED
        sealed_path.unlink(missing_ok=True)  # only a re-score of this job's own training counts
        start = time.time()
        with open(self.log_path, "ab") as log:
            returncode, timed_out, orphaned = self._supervise(self.command, log, start)
            done = {"returncode": returncode, "timed_out": timed_out, "orphaned": orphaned,
                    "wall_s": time.time() - start, "log": str(self.log_path)}
            if self.seal and returncode == 0:
                done["sealed"] = self._run_seal(log)
                atomic_write_text(sealed_path, json.dumps(done["sealed"]) + "\n")
                done["wall_s"] = time.time() - start
        return done

    def _supervise(self, command: list[str], log, start: float, stdout=None) -> tuple[int | None, bool, bool]:
        """Run `command` to its end under the job's wall-clock limit (from `start`), stopping it when the job's owner
        dies; (return code, timed out, orphaned). Its stderr (and stdout, unless given) goes to the log."""
        log.write(f"\n$ {' '.join(command)}\n".encode())
        log.flush()
        # A new session: the whole process tree (torchrun and its workers) can be signalled at once, by this
        # job or, through the pid file, by the search that launched it.
        parent = os.getpid()
        self._proc = subprocess.Popen(command, stdout=stdout or log, stderr=log if stdout else subprocess.STDOUT,
                                      cwd=REPO, env=clean_env(self.env), start_new_session=True,
                                      stdin=subprocess.DEVNULL, preexec_fn=lambda: prepare_training_process(parent))
        write_pid_file(self.run_dir, self._proc.pid, self.owner)
        timed_out = orphaned = False
        watched = self.owner is not None and self.owner.pid != parent  # in-process (debug): nothing to watch
        try:
            while True:
                left = self.timeout_s - (time.time() - start)
                try:
                    return self._proc.wait(timeout=max(0.0, min(left, self.WATCH_S))), False, False
                except subprocess.TimeoutExpired:
                    if time.time() - start >= self.timeout_s:
                        timed_out = True
                    elif watched and not self.owner.alive():
                        orphaned = True
                        log.write(f"\n[harness] the process that started this job (pid {self.owner.pid}) is gone: "
                                  "stopping the training (it saves a checkpoint; rerun the search to resume)\n".encode())
                        log.flush()
                    else:
                        continue
                    return self.stop(), timed_out, orphaned
        except BaseException:  # interrupted or cancelled: never leave the training running unsupervised
            self.stop()
            raise

    def _run_seal(self, log) -> dict:
        """The sealed re-score's JSON line ({"error": why} when it gives none), its stderr in the log. It gets the
        job's time limit again: an evaluation is cheap next to the training that came before it."""
        with tempfile.TemporaryFile() as out:
            returncode, timed_out, orphaned = self._supervise(self.seal, log, time.time(), stdout=out)
            out.seek(0)
            printed = out.read().decode(errors="replace").strip().splitlines()
        if timed_out or orphaned:
            return {"error": "the sealed re-score was stopped (" + ("time limit" if timed_out else "job owner gone") + ")"}
        try:
            scored = json.loads(printed[-1]) if returncode == 0 and printed else None
        except json.JSONDecodeError:
            scored = None
        if not isinstance(scored, dict) or not isinstance(scored.get("val_bpb"), int | float):
            log.flush()
            tail = self.log_path.read_bytes()[-4000:].decode(errors="replace")  # the seal's stderr went there
            return {"error": f"the sealed re-score gave no score (exit {returncode}): {last_line(tail)}"}
        return scored

    def stop(self, grace_s: float = 60.0) -> int | None:
        """SIGTERM the process group (model.train saves a checkpoint and exits 143), SIGKILL after grace_s."""
        if self._proc is None or self._proc.poll() is not None:
            return None if self._proc is None else self._proc.returncode
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            return self._proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            return self._proc.wait()
        except ProcessLookupError:
            return self._proc.wait()

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on SLURM preemption or time-out: stop gracefully, then requeue the same job
        (its command has --resume, so it continues from the checkpoint model.train just saved)."""
        import submitit
        self.stop()
        return submitit.helpers.DelayedSubmission(TrainingJob(self.command, self.run_dir, self.timeout_s, self.env,
                                                              self.owner, self.seal))


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.jobs --cwd DIR -- COMMAND...`: run COMMAND from DIR (replacing this process)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 4 or argv[0] != "--cwd" or argv[2] != "--":
        print("error: usage: python -m harness.jobs --cwd DIR -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    workdir, command = argv[1], argv[3:]
    if not Path(workdir).is_dir():
        print(f"error: --cwd {workdir}: not a directory (expected a patched experiment's worktree)", file=sys.stderr)
        return 2
    os.chdir(workdir)
    os.execvpe(command[0], command, clean_env())
    return 1  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
