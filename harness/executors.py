"""
Where jobs run: submitit's LocalExecutor (default), SlurmExecutor, or DebugExecutor.

- local: each job in its own worker process on this machine, with an explicit wall-clock timeout.
- slurm: each job an sbatch job (one node, N GPUs, one task that runs torchrun for N > 1); preempted or
  timed-out jobs are requeued by submitit and resume from their checkpoint (see TrainingJob.checkpoint).
- debug: jobs run one after another inside this process (submitit's DebugExecutor): for stepping through the
  harness with a debugger. The training itself is still a subprocess.
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from harness.jobs import Job, Owner, TrainingJob, left_running, stop_training

EXECUTORS = ("local", "slurm", "debug")


@dataclass
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    time_min: int | None = None            # default: the job's own timeout
    gpus_per_node: int | None = None       # default: the rung's devices
    cpus_per_task: int | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines before the job (module load, venv activation)
    extra: dict[str, str] = field(default_factory=dict)  # any other sbatch option: {"mem": "0", "exclusive": ""}

    # submitit asks SLURM for USR2 this long before the time limit, to checkpoint and requeue; a limit shorter than
    # that would be signalled (and requeued) at once, again and again.
    SIGNAL_DELAY_S = 120
    MIN_TIME_MIN = 3

    @classmethod
    def add_arguments(cls, parser, what: str = "rung") -> None:
        """The --slurm-* flags, the same for every command that submits jobs."""
        parser.add_argument("--slurm-partition", default=None)
        parser.add_argument("--slurm-account", default=None)
        parser.add_argument("--slurm-time", type=int, default=None, help=f"minutes per job (default: from the {what}'s budget)")
        parser.add_argument("--slurm-gpus-per-node", type=int, default=None, help=f"default: the {what}'s devices")
        parser.add_argument("--slurm-cpus-per-task", type=int, default=None)
        parser.add_argument("--slurm-setup", action="append", default=[], help="shell line run before each job (repeatable)")
        parser.add_argument("--slurm-arg", action="append", default=[], help="extra sbatch option, e.g. mem=64G (repeatable)")

    @classmethod
    def from_args(cls, args) -> SlurmOptions:
        """SlurmOptions from the --slurm-* flags; a bad value is a one-line ValueError naming the flag."""
        if args.slurm_time is not None and args.slurm_time < cls.MIN_TIME_MIN:
            raise ValueError(f"--slurm-time {args.slurm_time}: expected at least {cls.MIN_TIME_MIN} minutes (jobs are "
                             f"warned {cls.SIGNAL_DELAY_S} s before their limit to checkpoint and requeue)")
        for flag in ("slurm_gpus_per_node", "slurm_cpus_per_task"):
            value = getattr(args, flag)
            if value is not None and value < 0:
                raise ValueError(f"--{flag.replace('_', '-')} {value}: expected a non-negative integer")
        return cls(partition=args.slurm_partition, account=args.slurm_account, time_min=args.slurm_time,
                   gpus_per_node=args.slurm_gpus_per_node, cpus_per_task=args.slurm_cpus_per_task,
                   setup=list(args.slurm_setup), extra=cls.parse_extra(args.slurm_arg))

    @classmethod
    def parse_extra(cls, items: list[str]) -> dict[str, str]:
        """['mem=64G', 'exclusive'] -> {'mem': '64G', 'exclusive': ''} (sbatch option names without --)."""
        out = {}
        for item in items:
            key, _, value = item.lstrip("-").partition("=")
            if not key:
                raise ValueError(f"--slurm-arg {item!r}: expected an sbatch option like mem=64G")
            out[key.replace("-", "_")] = value
        return out


class Executor:
    """Submits jobs through one submitit executor, configured per job (devices, timeout)."""

    def __init__(self, kind: str, folder: Path, slurm: SlurmOptions | None = None, env: dict[str, str] | None = None):
        if kind not in EXECUTORS:
            raise ValueError(f"--executor {kind!r}: expected one of {', '.join(EXECUTORS)}")
        self.kind, self.folder, self.slurm, self.env = kind, Path(folder), slurm or SlurmOptions(), env or {}
        self._executor = None  # created on first submit: SlurmExecutor needs srun on this machine

    def _submitit(self):
        if self._executor is None:
            self.folder.mkdir(parents=True, exist_ok=True)  # (not before: a --dry-run builds an executor too)
            folder = str(self.folder / "%j")
            if self.kind == "local":
                self._executor = submitit.LocalExecutor(folder=folder)
            elif self.kind == "debug":
                self._executor = submitit.DebugExecutor(folder=folder)
            else:
                self._executor = submitit.SlurmExecutor(folder=folder)
        return self._executor

    def parameters(self, job: Job) -> dict:
        """submitit parameters for one job."""
        timeout_min = max(1, math.ceil(job.timeout_s / 60))
        if self.kind == "local":
            return dict(timeout_min=timeout_min + 1)  # TrainingJob enforces job.timeout_s; this is a backstop
        if self.kind == "debug":
            return {}
        s = self.slurm
        # GPU tiers ask for one GPU per device; CPU tiers ask for none (torchrun then runs gloo processes).
        gpus = s.gpus_per_node if s.gpus_per_node is not None else (job.rung.devices if job.train_tier == "gpu" else 0)
        params = dict(time=s.time_min or timeout_min + 5, nodes=job.rung.nodes, ntasks_per_node=1,
                      job_name=f"nanoresearch-{job.experiment_id}-{job.rung.name}-s{job.seed}",
                      signal_delay_s=SlurmOptions.SIGNAL_DELAY_S, use_srun=True)
        if gpus:
            params["gpus_per_node"] = gpus
        for key in ("partition", "account", "cpus_per_task", "qos", "constraint"):
            if getattr(s, key) is not None:
                params[key] = getattr(s, key)
        if s.setup:
            params["setup"] = list(s.setup)
        if s.extra:
            params["additional_parameters"] = dict(s.extra)
        return params

    def submit(self, job: Job):
        """Submit a job. A local one belongs to this process (it stops its training if this process dies), and a
        trainer still running in its run dir for an earlier session that is gone, if any, is stopped first (it
        checkpoints; the new job resumes from there). A trainer whose session is alive (the same command in another
        terminal), and a SLURM job (it belongs to the cluster), are left alone: the new job waits for the run dir's
        lock instead."""
        executor = self._submitit()
        executor.update_parameters(**self.parameters(job))
        owner = None
        if self.kind != "slurm":
            owner = Owner.this_process()
            if left_running(job.run_dir) and stop_training(job.run_dir):
                print(f"stopped a trainer left running in {job.run_dir} by an earlier session (it saved a checkpoint)",
                      file=sys.stderr, flush=True)
        return executor.submit(TrainingJob(job.command(), str(job.run_dir), job.timeout_s, self.env, owner,
                                           seal=job.seal_command()))

    def sbatch_script(self, job: Job) -> str:
        """The sbatch script submitit would submit for this job (for inspection and tests)."""
        from submitit.slurm.slurm import _make_sbatch_string
        command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(self.folder))}"
        return _make_sbatch_string(command=command, folder=str(self.folder / "%j"), **self.parameters(job))
