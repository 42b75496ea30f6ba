"""
`--dry-run` of a search or a speedrun: what it would run, and with which settings, without running or writing
anything.

For each job shape (the baseline's first seed at every rung of the ladder, or the track's job) it prints the exact
command an executor would run (the torchrun line when the rung takes several devices, and the sbatch script on
SLURM) and the run's plan as `python -m model.train --dry-run` computes it from the same arguments: model size,
batch and gradient accumulation, every learning rate, weight decay, horizon in steps, tokens and FLOPs, dtype. The
database, the runs dir, the data and the tokenizer are not touched (nothing is downloaded or trained).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Callable

from harness.executors import Executor
from harness.jobs import REPO, Job, clean_env
from harness.preparation import BadInput


def plan(job: Job) -> dict:
    """`model.train --dry-run` of the job's own arguments (run as a process: the harness never imports training)."""
    command = [sys.executable, "-m", "model.train", *job.train_args(), "--dry-run", "--world", str(job.rung.devices)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=clean_env(),
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BadInput(f"rung {job.rung.name}: its settings do not resolve: {last}")
    return json.loads(done.stdout)


def describe(job: Job, executor: Executor, say: Callable[[str], None]) -> None:
    p = plan(job)
    rung = job.rung
    say(f"rung {rung.name}: depth {rung.depth}, {rung.describe_horizon()}, {rung.seeds} seed{'s' * (rung.seeds > 1)}, "
        f"{rung.devices} device{'s' * (rung.devices > 1)}"
        + ("; uncalibrated (no measured throughput or noise: harness.calibrate on this hardware)"
           if rung.tok_per_s is None else f"; calibrated at {rung.tok_per_s:,.0f} tok/s"))
    say(f"  command: {shlex.join(job.command())}")
    say(f"  model: dim {p['model_dim']}, {p['n_head']} heads ({p['n_kv_head']} kv), {p['params'] / 1e6:,.1f}M params "
        f"({p['scaling_params'] / 1e6:,.1f}M scaling), {p['flops_per_token'] / 1e9:.3g} GFLOP/token")
    say(f"  batch: {p['total_batch_size']:,} tokens = {p['device_batch_size']} sequences x {p['world']} rank"
        f"{'s' * (p['world'] > 1)} x {p['grad_accum']} accumulation steps")
    lrs = ", ".join(f"{name} {lr:.4g}" for name, lr in p["learning_rates"].items())
    say(f"  learning rates (x{p['lr_batch_scale']:.4g} for the batch): {lrs}")
    say(f"  weight decay: {p['weight_decay']:.4g}")
    if p["num_iterations"] is not None:
        say(f"  horizon: {p['num_iterations']:,} steps, {p['tokens']:,} tokens (param/data ratio "
            f"{p['param_data_ratio']}), {p['flops']:.3g} FLOPs")
    else:
        say(f"  horizon: {p['time_budget']} s of training")
    say(f"  dtype: {p['dtype']} (bf16 on CUDA SM80+ when auto), fp8 {'on (SM89+ GPUs)' if p['fp8'] else 'off'}, "
        f"compile {'on' if p['compile'] else 'off'}, tier {p['tier']}")
    if executor.kind == "slurm":
        say("  sbatch script:\n" + "\n".join("    " + line for line in executor.sbatch_script(job).splitlines()))
