"""What a search and a speedrun prepare before their first job: the data, the runs dir, the tokenizer, the thread
split of local CPU jobs, a patched experiment's worktree, and each job's wall-clock limit.

All of it is checked or made before anything is recorded in the database, so bad input is one line (`BadInput`,
exit code 2) that leaves nothing behind. The tokenizer is trained here, once, so parallel jobs never race to
train the same one.
"""

from __future__ import annotations

import os
from pathlib import Path

from experiments.catalog import Rung, Tier
from harness.experiment import Experiment
from harness.jobs import unwritable


class BadInput(ValueError):
    """Input the user can fix: one line for them, exit code 2."""


def data_name(spec: str | None, tier: Tier) -> str:
    """Which corpus a search or speedrun trains on: --data, else $NANORESEARCH_DATA, else the tier's, else the
    default (FineWeb-EDU)."""
    from model.sources import DEFAULT_SOURCE
    return spec or os.environ.get("NANORESEARCH_DATA") or tier.data or DEFAULT_SOURCE


def check_devices(tier: Tier, executor: str, flag: str, instead: str) -> None:
    """A tier that trains on GPUs, run by this machine's own executor, needs CUDA here: say so before its corpus is
    downloaded (the gpu tier fetches 170 shards) or anything is recorded. SLURM jobs run on other nodes: not checked."""
    if executor != "local" or tier.train_tier != "gpu":
        return
    import torch
    if not torch.cuda.is_available():
        raise BadInput(f"{flag}: tier {tier.name!r} trains on GPUs and this machine has no CUDA device; use {instead} "
                       "here, or --executor slurm to run on GPU nodes")


def prepare_data(spec: str | None, tier: Tier):
    """The pretraining source: --data, else $NANORESEARCH_DATA, else the tier's corpus (ClimbMix for the gpu tier, as
    in nanochat's record), else FineWeb-EDU. A known public corpus that is not downloaded yet is fetched here: the
    tier's number of train shards plus the validation shard."""
    from model.download import download
    from model.sources import DOWNLOAD_SOURCES, resolve_source
    name = data_name(spec, tier)
    try:
        return resolve_source(name)
    except (ValueError, OSError) as e:
        if name not in DOWNLOAD_SOURCES:
            raise BadInput(str(e).splitlines()[0]) from None
    print(f"data: {name} is not downloaded yet: fetching {tier.data_shards} train shards and the validation shard "
          f"(use --data DIR or NANORESEARCH_DATA for a local copy)", flush=True)
    try:
        download(name, tier.data_shards)
        return resolve_source(name)
    except Exception as e:  # noqa: BLE001 - offline, mirror down...: say what to do instead
        raise BadInput(f"could not download {name} ({str(e).splitlines()[0]}); download it with `python -m "
                       f"model.data download --source {name} -n {tier.data_shards}` or point --data / "
                       f"NANORESEARCH_DATA at a local directory of parquet shards") from None


def prepare_runs_dir(runs_dir: Path) -> Path:
    """`runs_dir`, checked writable (it is made when missing)."""
    if why := unwritable(runs_dir):
        raise BadInput(f"--runs-dir {runs_dir}: {why}; expected a writable directory for the run dirs")
    return runs_dir


def prepare_tokenizer(source, train_tier: str, values: dict) -> str:
    """The directory of the tokenizer the jobs will use (trained now when not cached), for the tier's train defaults
    under `values` (the settings the jobs run with)."""
    from model.config import TIERS, TrainConfig
    from model.tokenizer import cached_tokenizer_dir, get_tokenizer
    values = {**TIERS[train_tier], **values}
    vocab = int(values["vocab_size"])
    chars = int(values.get("tokenizer_max_chars", TrainConfig.tokenizer_max_chars))
    get_tokenizer(source, vocab, max_chars=chars)
    return str(cached_tokenizer_dir(source, vocab, chars))


def local_threads(train_tier: str, executor_kind: str, parallel: int) -> tuple[dict[str, str], float]:
    """(environment, throughput share) of jobs: local CPU jobs running side by side split the cores between them, so
    each gets OMP_NUM_THREADS = cores / parallel and 1/parallel of a rung's calibrated throughput."""
    if train_tier == "cpu" and executor_kind == "local" and parallel > 1:
        return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // parallel))}, 1.0 / parallel
    return {}, 1.0


def threads_per_job(env: dict[str, str]) -> int:
    """The CPU threads each job trains with (for CPU-minute costs)."""
    return int(env.get("OMP_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def patch_worktree(exp: Experiment, experiment_id: str | None = None, sandboxed: bool = True) -> Path | None:
    """The git worktree a patched experiment's jobs run in (its commit + its patch; made again, its import checked
    in the sandbox unless not `sandboxed`, if it is gone); None for an experiment without a patch (this checkout)."""
    if not exp.patch:
        return None
    from harness.patches import PatchError, prepare, worktrees_root
    experiment_id = experiment_id or exp.id
    try:
        return prepare(exp.patch, exp.code_version, worktrees_root() / experiment_id, sandboxed=sandboxed)
    except PatchError as e:
        raise BadInput(f"experiment {experiment_id}: its patch no longer applies to commit {exp.code_version}: {e}") from None


def job_timeout(rung: Rung) -> float:
    """A job's wall-clock limit: the rung's own (tiers set one for compute-budgeted rungs from their calibrated
    cost), else from its time budget, else 12 hours."""
    if rung.timeout_s:
        return rung.timeout_s
    if rung.time_budget is not None:
        return 3 * rung.time_budget + 600  # start-up, tokenizer load, evaluations, a loaded machine
    return 12 * 3600.0
