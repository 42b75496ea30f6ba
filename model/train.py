"""
`python -m model.train`: train a GPT from the depth dial, on one process or under torchrun.

    python -m model.train --depth 2 --data DIR --out runs/x --time-budget 60
    torchrun --standalone --nproc_per_node=8 -m model.train --depth 24 --tier gpu --out runs/d24 --target core>=0.256525

Contract (see DESIGN.md): arguments in; RUN_DIR/config.json, metrics.jsonl, result.json, tokenizer/ and
checkpoints/ out. Exit code 0 only for status ok; 3 = diverged (NaN/inf loss); 1 = failed (crash, reason in
result.json and on stderr); 2 = bad input (one line on stderr, nothing written); 143 = terminated by SIGTERM
(checkpoint saved; run again with --resume).

What the depth dial does not set comes from the tier (--tier cpu|gpu, default from the device): vocab,
sequence length, head dim, batch. Any ModelConfig/OptimConfig/TrainConfig field can be overridden with
--set key=value. The horizon is one of --num-iterations, --token-budget N, --flops-budget F (training FLOPs: a
model that costs fewer FLOPs per token trains on more tokens), --param-data-ratio (tokens = ratio x scaling
params) or --time-budget SECONDS of training time; schedules run on the fraction of that horizon done. Every
horizon but the time budget is compute: the same on a quiet machine and a loaded one. result.json records the
throughput (tok_per_s, step_time_s) so speed is measured apart from the result.

total_training_time follows the nanochat leaderboard rule: synchronized step time only, excluding evaluation,
checkpointing, compilation warm-up and the first 10 steps. time_to_target is total_training_time at the first
evaluation that meets --target (val_bpb<=X or core>=X).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from model import fp8
from model import run_dir as rd
from model.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from model.cli import ArgumentParser
from model.config import (
    TIERS,
    ConfigError,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    batch_lr_scale,
    depth_scaled_weight_decay,
    parse_set_args,
    resolve_configs,
)
from model.gpt import GPT, compute_dtype
from model.hardware import describe, peak_flops, peak_memory_bytes, synchronize
from model.optim import build_optimizer
from model.provenance import code_version
from model.schedule import apply_schedules

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_TERMINATED = 0, 1, 2, 3, 143
UNTIMED_STEPS = 10  # the first steps (compilation, allocator warm-up) never count as training time


class BadInput(ValueError):
    """Invalid arguments: reported as one line, exit code 2, nothing written."""


@dataclasses.dataclass
class Target:
    metric: str  # val_bpb | core
    value: float

    @classmethod
    def parse(cls, text: str) -> Target:
        for metric, op in (("val_bpb", "<="), ("core", ">=")):
            prefix = metric + op
            if text.replace(" ", "").startswith(prefix):
                try:
                    return cls(metric, float(text.replace(" ", "")[len(prefix):]))
                except ValueError:
                    break
        raise BadInput(f"--target {text!r}: expected val_bpb<=NUMBER or core>=NUMBER")

    def met(self, value: float | None) -> bool:
        if value is None:
            return False
        return value <= self.value if self.metric == "val_bpb" else value >= self.value

    def __str__(self) -> str:
        return f"{self.metric}{'<=' if self.metric == 'val_bpb' else '>='}{self.value}"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m model.train", description="Train a nanochat-style GPT.")
    p.add_argument("--depth", type=int, required=True, help="number of layers: the dial that sets width, heads, LRs")
    p.add_argument("--out", required=True, help="run directory (config.json, metrics.jsonl, result.json, checkpoints)")
    p.add_argument("--data", default=None, help="pretraining data: a local dir or a source name (env NANORESEARCH_DATA)")
    p.add_argument("--tier", choices=sorted(TIERS), default=None, help="cpu or gpu defaults (default: from the device)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any ModelConfig/OptimConfig/TrainConfig field (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="model init (and data order, unless --data-seed is given)")
    p.add_argument("--data-seed", type=int, default=None,
                   help="data order only (default: --seed); the harness pairs runs on it while varying the init")
    horizon = p.add_mutually_exclusive_group()
    horizon.add_argument("--num-iterations", type=int, default=None, help="optimizer steps")
    horizon.add_argument("--token-budget", type=int, default=None, help="training tokens (rounded up to whole steps)")
    horizon.add_argument("--flops-budget", type=float, default=None,
                         help="training FLOPs (model FLOPs per token x tokens; rounded to whole steps)")
    horizon.add_argument("--param-data-ratio", type=float, default=None, help="tokens = ratio x scaling params")
    horizon.add_argument("--time-budget", type=float, default=None, help="seconds of training time")
    p.add_argument("--target", default=None, help="val_bpb<=X or core>=X: record time_to_target")
    p.add_argument("--stop-at-target", action="store_true", help="stop training once the target is met")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--eval-every", type=int, default=None, help="steps between val evaluations (and at the end)")
    p.add_argument("--eval-tokens", type=int, default=None, help="val tokens per evaluation")
    p.add_argument("--save-every", type=int, default=None, help="steps between checkpoints (always at the end)")
    p.add_argument("--core-every", type=int, default=None, help="steps between CORE evaluations (0 = off)")
    p.add_argument("--eval-bundle", default=None, help="CORE bundle dir (env NANORESEARCH_EVAL_BUNDLE)")
    p.add_argument("--tokenizer", default=None, help="a saved tokenizer dir (default: trained/cached for --data)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline unless configured)")
    p.add_argument("--wandb-group", default=None, help="with --wandb: the W&B group (the harness: its search or track)")
    p.add_argument("--wandb-job-type", default=None, help="with --wandb: the W&B job type (the harness: the experiment)")
    p.add_argument("--wandb-name", default=None, help="with --wandb: the W&B run name (default: the run dir's name)")
    p.add_argument("--wandb-tag", action="append", default=[], metavar="TAG",
                   help="with --wandb: a W&B tag (repeatable; the harness: rung, seed and role)")
    p.add_argument("--experiment-id", default=None, help="set by the harness; recorded in config.json")
    p.add_argument("--rung", default=None, help="set by the harness; recorded in config.json")
    p.add_argument("--dry-run", action="store_true",
                   help="print the run's plan (model, batch, LRs, weight decay, horizon) as JSON and exit: no data, "
                        "tokenizer or run dir is touched")
    p.add_argument("--world", type=int, default=None,
                   help="with --dry-run: the ranks to plan for (default: this process's, 1 outside torchrun); "
                        "model.seal: the ranks the run trained on")
    return p


# -----------------------------------------------------------------------------------------------------------
# Setup: everything that can reject the input happens here, before anything is written.

@dataclasses.dataclass
class Setup:
    args: argparse.Namespace
    tier: str
    device: torch.device
    model_config: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    overrides: dict
    target: Target | None
    run_dir: Path


def resolve_setup(args: argparse.Namespace, device: torch.device, world: int = 1) -> Setup:
    if args.depth < 1:
        raise BadInput(f"--depth {args.depth}: expected a positive integer")
    for flag in ("num_iterations", "eval_every", "eval_tokens", "save_every", "core_every"):
        value = getattr(args, flag)
        if value is not None and value < (1 if flag in ("num_iterations", "eval_tokens") else 0):
            raise BadInput(f"--{flag.replace('_', '-')} {value}: expected a {'positive' if flag in ('num_iterations', 'eval_tokens') else 'non-negative'} integer")
    if args.time_budget is not None and not (args.time_budget > 0 and math.isfinite(args.time_budget)):
        raise BadInput(f"--time-budget {args.time_budget}: expected a positive number of seconds")
    if args.param_data_ratio is not None and not args.param_data_ratio > 0:
        raise BadInput(f"--param-data-ratio {args.param_data_ratio}: expected a positive number")
    if args.token_budget is not None and args.token_budget < 1:
        raise BadInput(f"--token-budget {args.token_budget}: expected a positive number of tokens")
    if args.flops_budget is not None and not (args.flops_budget > 0 and math.isfinite(args.flops_budget)):
        raise BadInput(f"--flops-budget {args.flops_budget}: expected a positive number of FLOPs, e.g. 4.7e12")
    target = Target.parse(args.target) if args.target else None
    if args.stop_at_target and target is None:
        raise BadInput("--stop-at-target needs --target")

    tier_name = args.tier or ("gpu" if device.type == "cuda" else "cpu")
    tier = TIERS[tier_name]
    overrides = parse_set_args(args.set)
    flag_over = {"eval_every": args.eval_every, "eval_tokens": args.eval_tokens, "save_every": args.save_every,
                 "core_every": args.core_every, "compile": args.compile}
    model_config, optim, train = resolve_configs(tier, args.depth, overrides, flag_over)
    # Batch: device_batch_size sequences per rank per micro-step, accumulated to total_batch_size tokens.
    tokens_per_micro = train.device_batch_size * model_config.sequence_len * world
    if train.total_batch_size % tokens_per_micro:
        raise BadInput(f"total_batch_size={train.total_batch_size}: expected a multiple of device_batch_size x "
                       f"sequence_len x ranks = {tokens_per_micro}")
    if model_config.vocab_size < 300:
        raise BadInput(f"vocab_size={model_config.vocab_size}: expected at least 300 (256 bytes + special tokens + merges)")
    return Setup(args, tier_name, device, model_config, optim, train, overrides, target, Path(args.out))


def init_distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size); initialises the process group under torchrun."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 0, 1
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    use_cuda = torch.cuda.is_available() and os.environ.get("NANORESEARCH_FORCE_CPU") != "1"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, local_rank, world


def select_device(args, local_rank: int, world: int) -> torch.device:
    want = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: no CUDA device is available")
    device = torch.device(f"cuda:{local_rank}" if want == "cuda" else "cpu")
    if device.type == "cpu" and world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return device


def resolve_inputs(setup: Setup, rank: int, world: int) -> tuple:
    """(data source, tokenizer, the config.json of the run being resumed or None). The tokenizer is the resumed
    run's, else --tokenizer, else trained (or found in the cache) for the data by rank 0."""
    from model.sources import resolve_source
    from model.tokenizer import Tokenizer, get_tokenizer
    args, run_dir, master = setup.args, setup.run_dir, rank == 0
    try:
        source = resolve_source(args.data)
    except (ValueError, OSError) as e:
        raise BadInput(str(e).splitlines()[0]) from None
    if master and (why := unwritable(run_dir)):  # before minutes of tokenizer training, and before writing anything
        raise BadInput(f"--out {run_dir}: cannot write there ({why}); expected a writable directory")

    resuming_config = rd.load_config(run_dir) if (args.resume and (run_dir / rd.CONFIG).exists()) else None
    if resuming_config is not None:
        tokenizer = Tokenizer.load(run_dir / rd.TOKENIZER_DIR)
    elif args.tokenizer:
        try:
            tokenizer = Tokenizer.load(args.tokenizer)
        except (OSError, ValueError) as e:
            raise BadInput(f"--tokenizer {args.tokenizer}: {e}".splitlines()[0]) from None
    else:
        vocab, chars = setup.model_config.vocab_size, setup.train.tokenizer_max_chars
        if master:  # rank 0 trains (or finds) the cached tokenizer; the others then load it from the cache
            tokenizer = get_tokenizer(source, vocab, max_chars=chars)
        if world > 1:
            dist.barrier()
        if not master:
            tokenizer = get_tokenizer(source, vocab, max_chars=chars, progress=False)
    if tokenizer.vocab_size != setup.model_config.vocab_size:
        raise BadInput(f"tokenizer vocab {tokenizer.vocab_size} != vocab_size={setup.model_config.vocab_size}")
    return source, tokenizer, resuming_config


def claim_run_dir(setup: Setup, rank: int, world: int) -> int | None:
    """Everything the user gave has been checked; from here on the run dir is ours. Rank 0 holds a lock on it for
    the whole run, so a second process pointed at the same dir (a search restarted while an orphaned job still
    trains, a SLURM requeue racing the old job) waits instead of writing alongside. An existing run dir is
    continued only with --resume, and a finished run is left alone: its exit code is returned, else None."""
    args, run_dir, master = setup.args, setup.run_dir, rank == 0
    if master:
        acquire_run_lock(run_dir)
    if world > 1:
        dist.barrier()
    if (run_dir / rd.CONFIG).exists() and not args.resume:
        raise BadInput(f"--out {run_dir}: already holds a run; pass --resume to continue it or choose a new --out")
    if args.resume and (run_dir / rd.RESULT).exists():
        status = rd.load_result(run_dir).status
        if status in ("ok", "diverged"):
            if master:
                print(f"train: {run_dir} already finished with status {status}; nothing to do", file=sys.stderr)
            return EXIT_OK if status == "ok" else EXIT_DIVERGED
    if world > 1:
        dist.barrier()  # every rank has checked the run dir before rank 0 writes into it
    return None


# -----------------------------------------------------------------------------------------------------------
# Loop state and the training context

@dataclasses.dataclass
class LoopState:
    """What the loop carries from step to step: saved in every checkpoint (as a dict, "loop"), restored on resume."""
    step: int = 0
    train_time: float = 0.0  # timed seconds of training (nanochat's rule, see the module docstring)
    tokens: int = 0
    smooth_loss: float = 0.0  # EMA of the train loss (debiased when shown)
    time_to_target: float | None = None
    min_val_bpb: float | None = None
    last_val_bpb: float | None = None
    last_core: float | None = None

    @classmethod
    def restore(cls, saved: dict) -> LoopState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})


@dataclasses.dataclass
class Training:
    """Everything the loop, its evaluations and its checkpoints use: built by prepare(); `state` changes as it goes."""
    setup: Setup
    rank: int
    world: int
    tokenizer: Any
    model: GPT
    train_model: torch.nn.Module  # the model as trained: DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    loader: Any
    val_batches: Any
    token_bytes: torch.Tensor
    flops_per_token: int
    grad_accum: int
    num_iterations: int | None  # a compute horizon, or
    budget: float | None  # seconds of training time
    state: LoopState
    resume_step: int | None  # the checkpoint's step when resumed (it is not saved again)
    peak: float | None  # peak FLOP/s of one device (None: unknown, no MFU)
    wandb_run: Any = None
    core_bundle: Any = None  # resolved at the first CORE evaluation
    terminated: bool = False  # set by SIGTERM: save a checkpoint and stop

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return self.setup.device

    @property
    def train(self) -> TrainConfig:
        return self.setup.train

    @property
    def run_dir(self) -> Path:
        return self.setup.run_dir


class Terminated(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank, local_rank, world = init_distributed()
    master = rank == 0
    try:
        code = run(args, rank, local_rank, world)
        if world > 1:
            # Every rank tears the process group down together: a gloo rank whose peer already left can abort in its
            # own teardown (seen once in CI: rank 1 SIGABRT after a finished run, so torchrun reported a failure).
            dist.barrier()
        return code
    except (BadInput, ConfigError) as e:
        if master:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(args, rank: int, local_rank: int, world: int) -> int:
    if args.dry_run:
        world = args.world or world
        if world < 1:
            raise BadInput(f"--world {world}: expected a positive number of ranks")
        setup = resolve_setup(args, torch.device("cpu"), world)
        print(json.dumps(plan(setup, world), indent=2))
        return EXIT_OK
    device = select_device(args, local_rank, world)
    setup = resolve_setup(args, device, world)
    source, tokenizer, resuming_config = resolve_inputs(setup, rank, world)
    if (exit_code := claim_run_dir(setup, rank, world)) is not None:
        return exit_code
    training = prepare(setup, source, tokenizer, resuming_config, rank, local_rank, world)
    return train_loop(training)


def prepare(setup: Setup, source, tokenizer, resuming_config: dict | None, rank: int, local_rank: int,
            world: int) -> Training:
    """Model, optimizer and data; config.json written and the loop state restored from the checkpoint on --resume."""
    args, train, model_config, device = setup.args, setup.train, setup.model_config, setup.device
    data_seed = args.seed if args.data_seed is None else args.data_seed
    model = build_model(setup)
    counts = model.num_params()
    flops_per_token = model.num_flops_per_token()
    fp8_linears = use_fp8(setup, model, rank)
    T = model_config.sequence_len
    num_iterations, budget, horizon = horizon_of(args, train, counts["scaling"], flops_per_token)
    weight_decay = scaled_weight_decay(setup)
    optimizer = build_optimizer(model, setup.optim, total_batch_size=train.total_batch_size, weight_decay=weight_decay)
    device_batch = chosen_device_batch(setup, model, resuming_config, rank, world)
    if device_batch != train.device_batch_size:
        setup.train = train = dataclasses.replace(train, device_batch_size=device_batch)
    grad_accum = train.total_batch_size // (train.device_batch_size * T * world)
    train_model = wrap_for_training(model, setup, local_rank, world)
    loader, val_batches, token_bytes = build_data(setup, source, tokenizer, rank, world, data_seed)

    state = LoopState()
    checkpoint = latest_checkpoint(setup.run_dir) if args.resume else None
    record = config_record(setup, source, world, data_seed=data_seed, horizon=horizon, counts=counts,
                           flops_per_token=flops_per_token, grad_accum=grad_accum, weight_decay=weight_decay)
    record["fp8_linears"] = fp8_linears
    if resuming_config is not None:
        check_resumed_config(setup.run_dir, resuming_config, record)
    if checkpoint is not None:
        state = restore_checkpoint(checkpoint, model, optimizer, loader, rank, device)
    if rank == 0:
        # Evaluations from after the checkpoint (and at its step, which is evaluated again) are dropped.
        start_run_dir(setup.run_dir, record, tokenizer, state.step if checkpoint is not None else 0)
        print(f"train: {describe(device, world)} | depth {model_config.depth} dim {model_config.model_dim} "
              f"heads {model_config.n_head}/{model_config.n_kv_head} | {counts['total'] / 1e6:.2f}M params "
              f"({counts['scaling'] / 1e6:.2f}M scaling) | batch {train.total_batch_size} tokens "
              f"({train.device_batch_size}x{T} x{grad_accum} accum x{world} ranks) | horizon {horizon}"
              + (f" | resumed at step {state.step}" if checkpoint else ""), file=sys.stderr, flush=True)

    wandb_run = start_wandb(args, setup.run_dir, record) if (rank == 0 and args.wandb) else None
    return Training(setup=setup, rank=rank, world=world, tokenizer=tokenizer, model=model, train_model=train_model,
                    optimizer=optimizer, loader=loader, val_batches=val_batches, token_bytes=token_bytes,
                    flops_per_token=flops_per_token, grad_accum=grad_accum, num_iterations=num_iterations,
                    budget=budget, state=state, resume_step=state.step if checkpoint is not None else None,
                    peak=peak_flops(device), wandb_run=wandb_run)


def plan(setup: Setup, world: int) -> dict:
    """What a run would do, from its settings alone (--dry-run): the model built on the meta device (no memory, no
    init), its optimizer's learning rates, the batch, weight decay and horizon the dial gives."""
    args, train, config = setup.args, setup.train, setup.model_config
    with torch.device("meta"):
        model = GPT(config)
    counts, flops_per_token = model.num_params(), model.num_flops_per_token()
    num_iterations, budget, horizon = horizon_of(args, train, counts["scaling"], flops_per_token)
    weight_decay = scaled_weight_decay(setup)
    optimizer = build_optimizer(model, setup.optim, total_batch_size=train.total_batch_size, weight_decay=weight_decay)
    names = {id(p): name for name, ps in model.param_groups().items() for p in ps}
    lrs = {}
    for group in optimizer.param_groups:
        lrs.setdefault(names[id(group["params"][0])], group["lr"])
    tokens = num_iterations * train.total_batch_size if num_iterations is not None else None
    return {"depth": config.depth, "model_dim": config.model_dim, "n_head": config.n_head, "n_kv_head": config.n_kv_head,
            "params": counts["total"], "scaling_params": counts["scaling"], "flops_per_token": flops_per_token,
            "total_batch_size": train.total_batch_size, "device_batch_size": train.device_batch_size, "world": world,
            "grad_accum": train.total_batch_size // (train.device_batch_size * config.sequence_len * world),
            "lr_batch_scale": batch_lr_scale(train.total_batch_size), "learning_rates": lrs,
            "weight_decay": weight_decay, "horizon": horizon, "num_iterations": num_iterations, "time_budget": budget,
            "tokens": tokens, "flops": tokens * flops_per_token if tokens is not None else None,
            "param_data_ratio": round(tokens / counts["scaling"], 3) if tokens is not None else None,
            "dtype": config.dtype, "compile": train.compile, "fp8": train.fp8, "tier": setup.tier}


# -----------------------------------------------------------------------------------------------------------
# Model and optimizer

def build_model(setup: Setup) -> GPT:
    torch.manual_seed(setup.args.seed)
    with torch.device(setup.device):
        return GPT(setup.model_config)


def horizon_of(args, train: TrainConfig, scaling: int, flops_per_token: int) -> tuple[int | None, float | None, dict]:
    """(optimizer steps, time budget, the horizon as recorded): steps from a compute budget, or a time budget
    checked as training goes."""
    if args.time_budget is not None:
        return None, args.time_budget, {"time_budget": args.time_budget}
    num_iterations, horizon = compute_horizon(args, train, scaling, flops_per_token)
    return num_iterations, None, horizon


def scaled_weight_decay(setup: Setup) -> float:
    """Weight decay: nanochat's value is tuned at d12 with a 2^19-token batch; the dial carries it to this model and
    batch (model.config.depth_scaled_weight_decay) when the tier asks for it, else it is used as given."""
    optim, train = setup.optim, setup.train
    if not train.scale_wd_with_depth:
        return optim.weight_decay
    return depth_scaled_weight_decay(optim.weight_decay, setup.model_config, train.total_batch_size)


def use_fp8(setup: Setup, model: GPT, rank: int) -> int:
    """With fp8 set: the eligible Linears converted (before compile and DDP) where the GPU can; how many were."""
    if not setup.train.fp8:
        return 0
    if why := fp8.supported(setup.device):
        if rank == 0:
            print(f"train: fp8 requested but {why}: training in bf16", file=sys.stderr, flush=True)
        return 0
    converted = fp8.convert(model)
    if rank == 0:
        print(f"train: fp8 matmuls in {converted} Linears (tensorwise scaling); evaluation in bf16", file=sys.stderr,
              flush=True)
    return converted


def chosen_device_batch(setup: Setup, model: GPT, resuming_config: dict | None, rank: int, world: int) -> int:
    """Sequences per forward pass: a resumed run keeps its own; on CUDA with auto_device_batch, the largest that fits
    (fit_device_batch); else as configured. The total batch is kept either way (more accumulation steps)."""
    train = setup.train
    if resuming_config is not None:
        return int((resuming_config.get("train") or {}).get("device_batch_size", train.device_batch_size))
    if not (train.auto_device_batch and setup.device.type == "cuda"):
        return train.device_batch_size
    T, vocab = setup.model_config.sequence_len, setup.model_config.vocab_size
    # What the optimizer will hold on top of a step's peak: ~2 fp32 states a parameter (AdamW; Muon holds fewer).
    state_bytes = 8 * sum(p.numel() for p in model.parameters())
    budget = 0.95 * torch.cuda.get_device_properties(setup.device).total_memory

    def fits(batch: int) -> bool:
        torch.cuda.reset_peak_memory_stats(setup.device)
        x = torch.randint(0, vocab, (batch, T), device=setup.device)
        model(x, x).backward()  # eager, on this rank's own model: no collective can hang on another rank's OOM
        model.zero_grad(set_to_none=True)
        return torch.cuda.max_memory_allocated(setup.device) + state_bytes <= budget

    batch = fit_device_batch(fits, train.device_batch_size, train.total_batch_size // (T * world))
    if world > 1:  # every rank steps with the same batch: the smallest any rank could fit
        box = torch.tensor([batch], device=setup.device)
        dist.all_reduce(box, op=dist.ReduceOp.MIN)
        batch = int(box.item())
    torch.cuda.empty_cache()
    if batch != train.device_batch_size and rank == 0:
        print(f"train: device_batch_size {train.device_batch_size} does not fit in this GPU's memory: using {batch} "
              f"(the total batch is kept by accumulating more micro-steps)", file=sys.stderr, flush=True)
    return batch


def fit_device_batch(fits, device_batch: int, rows_per_step: int) -> int:
    """The largest device batch, halving from `device_batch`, for which fits(batch) is true and does not raise an
    out-of-memory error. `rows_per_step` (sequences per step per rank) must stay a multiple of it, so the total batch
    is reached by accumulation. BadInput when not even one sequence fits."""
    batch = device_batch
    while True:
        try:
            if fits(batch):
                return batch
        except torch.OutOfMemoryError:
            pass
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if batch == 1 or batch % 2 or rows_per_step % (batch // 2):
            raise BadInput(f"device_batch_size={batch}: a training step does not fit in memory, and halving it "
                           f"cannot keep {rows_per_step} sequences a step per rank; set a smaller total_batch_size or "
                           "a smaller model")
        batch //= 2


def wrap_for_training(model: GPT, setup: Setup, local_rank: int, world: int) -> torch.nn.Module:
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        train_model = DistributedDataParallel(model, device_ids=[local_rank] if setup.device.type == "cuda" else None)
    if setup.train.compile:
        train_model = torch.compile(train_model, dynamic=False)
    return train_model


# -----------------------------------------------------------------------------------------------------------
# Data

def build_data(setup: Setup, source, tokenizer, rank: int, world: int, data_seed: int) -> tuple:
    """(the train loader, the validation batches, bytes per token for bits per byte)."""
    from model.loader import BestFitLoader, validation_batches
    train, T, device = setup.train, setup.model_config.sequence_len, setup.device
    loader = BestFitLoader(tokenizer, source, "train", train.device_batch_size, T, rank=rank, world_size=world,
                           device=device, seed=data_seed)
    val_batches = validation_batches(tokenizer, source, train.device_batch_size, T, train.eval_tokens, rank=rank,
                                     world_size=world, device=device, spread=train.eval_spread)
    return loader, val_batches, tokenizer.token_bytes().to(device)


# -----------------------------------------------------------------------------------------------------------
# Run dir: config.json, resume

def config_record(setup: Setup, source, world: int, *, data_seed: int, horizon: dict, counts: dict,
                  flops_per_token: int, grad_accum: int, weight_decay: float) -> dict:
    """config.json: everything needed to reproduce the run."""
    args, device = setup.args, setup.device
    return {
        "depth": args.depth, "tier": setup.tier, "seed": args.seed, "data_seed": data_seed, "device": device.type,
        "world_size": world,
        "overrides": {k: v for k, v in setup.overrides.items()},
        "model": dataclasses.asdict(setup.model_config), "optim": dataclasses.asdict(setup.optim),
        "train": dataclasses.asdict(setup.train),
        "data": source.name, "data_fingerprint": source.fingerprint(), "budget": horizon,
        "target": str(setup.target) if setup.target else None, "code_version": code_version(),
        "hardware": describe(device, world), "command": command_line(world),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "experiment_id": args.experiment_id, "rung": args.rung,
        "chat": False, "num_params": counts, "flops_per_token": flops_per_token, "grad_accum": grad_accum,
        "weight_decay_used": weight_decay,
        "compute_dtype": str(compute_dtype(setup.model_config, device)).removeprefix("torch."),  # what "auto" chose
    }


def check_resumed_config(run_dir: Path, resuming_config: dict, record: dict) -> None:
    """A resumed run must be the run it continues (BadInput otherwise); it keeps its first created_at."""
    resuming_config.setdefault("data_seed", resuming_config.get("seed"))  # run dirs from before --data-seed
    changed = [k for k in ("depth", "seed", "data_seed", "model", "optim", "train", "budget", "data_fingerprint")
               if resuming_config.get(k) != record[k]]
    if changed:
        raise BadInput(f"--resume {run_dir}: the run was started with different settings ({', '.join(changed)})")
    record["created_at"] = resuming_config.get("created_at")


def restore_checkpoint(path: Path, model: GPT, optimizer, loader, rank: int, device: torch.device) -> LoopState:
    saved = load_checkpoint(path, device)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    loader.load_state_dict(saved["loader"][rank])
    state = LoopState.restore(saved["loop"])
    torch.set_rng_state(saved["rng"]["cpu"])
    if device.type == "cuda" and saved["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(saved["rng"]["cuda"])
    return state


def start_run_dir(run_dir: Path, record: dict, tokenizer, keep_points_before: int) -> None:
    """Rank 0: config.json, the tokenizer, metrics.jsonl cut to the evaluations before `keep_points_before`, and no
    result.json (a stale result, e.g. timeout, must not outlive the rerun)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rd.write_config(run_dir, record)
    tokenizer_dir = run_dir / rd.TOKENIZER_DIR
    if not tokenizer_dir.exists():
        tokenizer.save(tokenizer_dir)
    rd.keep_points_before(run_dir, keep_points_before)
    rd.remove_result(run_dir)


def save(tr: Training, step: int) -> None:
    """A checkpoint (every rank's loader position; written by rank 0)."""
    loader_states = [tr.loader.state_dict()]
    if tr.world > 1:
        gathered = [None] * tr.world
        dist.all_gather_object(gathered, loader_states[0])
        loader_states = gathered
    if tr.master:
        device = tr.device
        save_checkpoint(tr.run_dir, step, {
            "step": step, "model": tr.model.state_dict(), "optimizer": tr.optimizer.state_dict(),
            "loader": loader_states, "loop": dataclasses.asdict(tr.state),
            "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        })


# -----------------------------------------------------------------------------------------------------------
# Evaluation

def evaluate(tr: Training, step: int, final: bool) -> None:
    """val_bpb (and CORE when due) at `step`: the state's last/min values and time to target, a metrics.jsonl line."""
    from model.evaluate import evaluate_bpb
    model, state, train, target = tr.model, tr.state, tr.train, tr.setup.target
    model.eval()
    with torch.no_grad(), fp8.bf16_linears(model):  # the model is measured in bf16, whatever it trains in
        val_bpb = evaluate_bpb(model, tr.val_batches, tr.token_bytes)
        core = None
        if train.core_every and (final or step % train.core_every == 0):
            core = run_core(tr)
    model.train()
    state.last_val_bpb = val_bpb
    state.min_val_bpb = val_bpb if state.min_val_bpb is None else min(state.min_val_bpb, val_bpb)
    if core is not None:
        state.last_core = core
    if target and state.time_to_target is None and target.met(core if target.metric == "core" else val_bpb):
        state.time_to_target = state.train_time
    timed = max(0, step - UNTIMED_STEPS)
    tok_per_s = timed * train.total_batch_size / state.train_time if state.train_time > 0 else None
    point = {"step": step, "tokens": state.tokens, "elapsed_train_s": round(state.train_time, 3),
             "train_loss": debiased(state.smooth_loss, step), "val_bpb": val_bpb,
             "tok_per_s": tok_per_s, "mfu": mfu(tr, tok_per_s), "core": core, "wall_time": time.time()}
    if tr.master:
        rd.append_point(tr.run_dir, point)
        extra = f" | core {core:.4f}" if core is not None else ""
        print(f"eval: step {step} | val_bpb {val_bpb:.4f}{extra} | train time {state.train_time:.1f}s"
              + (f" | target {target} met at {state.time_to_target:.1f}s" if state.time_to_target is not None else ""),
              file=sys.stderr, flush=True)
        if tr.wandb_run:
            tr.wandb_run.log({k: v for k, v in point.items() if v is not None}, step=step)


def run_core(tr: Training) -> float:
    """CORE of the current model: evaluated on rank 0, broadcast to the others."""
    from model.evaluate import evaluate_core, resolve_eval_bundle
    if tr.core_bundle is None:
        tr.core_bundle = resolve_eval_bundle(tr.setup.args.eval_bundle)
    result = None
    if tr.master:
        result = evaluate_core(tr.model, tr.tokenizer, tr.core_bundle, max_per_task=tr.train.core_max_per_task or None,
                               device=tr.device, progress=False)
    if tr.world > 1:
        box = [result["core"] if tr.master else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return result["core"]


def mfu(tr: Training, tok_per_s: float | None) -> float | None:
    if tok_per_s is None or tr.peak is None:
        return None
    return tr.flops_per_token * tok_per_s / (tr.peak * tr.world)


# -----------------------------------------------------------------------------------------------------------
# Training loop

def finished(tr: Training, step: int) -> bool:
    if tr.num_iterations is not None:
        done = step >= tr.num_iterations
    else:
        done = tr.state.train_time >= tr.budget
    if tr.world > 1:  # every rank must stop on the same step; rank 0's clock decides
        flag = torch.tensor([int(done)], device=tr.device)
        dist.broadcast(flag, src=0)
        done = bool(flag.item())
    return done


def progress_of(tr: Training, step: int) -> float:
    if tr.num_iterations is not None:
        return step / tr.num_iterations
    return min(1.0, tr.state.train_time / tr.budget)


def train_step(tr: Training, step: int) -> tuple[float, float]:
    """One optimizer step: grad_accum micro-batches, then the update. Returns (train loss, LR multiplier); its time
    (after the first UNTIMED_STEPS) and tokens are added to the state."""
    device, train, train_model = tr.device, tr.train, tr.train_model
    synchronize(device)
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    for micro in range(tr.grad_accum):
        x, y = next(tr.loader)
        sync_grads = micro == tr.grad_accum - 1
        # DDP: all-reduce gradients once per optimizer step, on the last micro-batch.
        context = train_model.no_sync() if (tr.world > 1 and not sync_grads and not train.compile) else contextlib.nullcontext()
        with context:
            loss = train_model(x, y)
            (loss / tr.grad_accum).backward()
        loss_sum += loss.detach()
    lr_mult = apply_schedules(tr.optimizer, step, progress_of(tr, step), tr.setup.optim, train)
    tr.optimizer.step()
    tr.model.zero_grad(set_to_none=True)
    train_loss = (loss_sum / tr.grad_accum).item()  # also a sync point
    synchronize(device)
    dt = time.perf_counter() - t0
    if step >= UNTIMED_STEPS:
        tr.state.train_time += dt
    tr.state.tokens += train.total_batch_size
    return train_loss, lr_mult


def train_loop(tr: Training) -> int:
    """Evaluate when due, checkpoint when due, step; until the horizon (or the target, with --stop-at-target), a
    non-finite loss (diverged), SIGTERM (timeout: checkpoint saved) or a crash (failed)."""
    signal.signal(signal.SIGTERM, lambda *_: setattr(tr, "terminated", True))
    state, train = tr.state, tr.train
    last_log = (time.perf_counter(), state.step)
    status, reason = "ok", None
    try:
        step = state.step
        while True:
            last = finished(tr, step)
            if last or (train.eval_every and step % train.eval_every == 0):
                evaluate(tr, step, final=last)
                if tr.setup.args.stop_at_target and state.time_to_target is not None:
                    last = True
            if last:
                break
            if tr.terminated:
                raise Terminated()
            if train.save_every and step % train.save_every == 0 and step not in (0, tr.resume_step):
                save(tr, step)
            train_loss, lr_mult = train_step(tr, step)
            if not math.isfinite(train_loss):
                status, reason = "diverged", f"loss became {train_loss} at step {step}"
                step += 1
                state.step = step
                break
            state.smooth_loss = 0.9 * state.smooth_loss + 0.1 * train_loss
            step += 1
            state.step = step
            if tr.master and train.log_every and step % train.log_every == 0:
                now = time.perf_counter()
                rate = (step - last_log[1]) * train.total_batch_size / max(now - last_log[0], 1e-9)
                last_log = (now, step)
                loss = debiased(state.smooth_loss, step)
                print(progress_line(step, tr.num_iterations, tr.budget, state, loss, lr_mult, rate, mfu(tr, rate)),
                      file=sys.stderr, flush=True)
                try:  # for live views only: never worth stopping the training over
                    rd.write_progress(tr.run_dir, {"step": step, "of": tr.num_iterations, "train_loss": loss,
                                                   "tok_per_s": rate, "val_bpb": state.last_val_bpb,
                                                   "elapsed_train_s": state.train_time, "updated_at": time.time()})
                except OSError:
                    pass
    except Terminated:
        save(tr, state.step)
        if tr.master:
            write_result(tr, "timeout", "terminated by SIGTERM (preempted or out of time); rerun with --resume")
            print("train: terminated; checkpoint saved, rerun with --resume", file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as e:  # noqa: BLE001 - any crash is recorded as a failed run, then re-raised for the log
        if tr.master:
            write_result(tr, "failed", f"{type(e).__name__}: {e}".splitlines()[0])
            print(f"error: training failed: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        import traceback
        traceback.print_exc()
        return EXIT_FAILED
    return finish(tr, status, reason)


# -----------------------------------------------------------------------------------------------------------
# Finish: the last checkpoint, result.json, a summary line

def finish(tr: Training, status: str, reason: str | None) -> int:
    state = tr.state
    if status == "ok":
        save(tr, state.step)
    if tr.master:
        write_result(tr, status, reason)
        summary = f"train: {status} | steps {state.step} | val_bpb {state.last_val_bpb}"
        if state.time_to_target is not None:
            summary += f" | time_to_target {state.time_to_target:.1f}s"
        print(summary + f" | training time {state.train_time:.1f}s" + (f" | {reason}" if reason else ""), file=sys.stderr)
        if tr.wandb_run:
            tr.wandb_run.summary.update({k: v for k, v in {
                "status": status, "reason": reason, "steps": state.step, "final_val_bpb": state.last_val_bpb,
                "time_to_target": state.time_to_target, "training_time_s": state.train_time}.items() if v is not None})
            tr.wandb_run.finish(exit_code=0 if status == "ok" else 1)
    return EXIT_OK if status == "ok" else EXIT_DIVERGED


def write_result(tr: Training, status: str, reason: str | None) -> None:
    state = tr.state
    tr.run_dir.mkdir(parents=True, exist_ok=True)
    rd.write_result(tr.run_dir, rd.Result(
        status=status, val_bpb=state.last_val_bpb, min_val_bpb=state.min_val_bpb, core=state.last_core,
        total_training_time=round(state.train_time, 3), time_to_target=state.time_to_target,
        tokens=state.tokens, flops=tr.flops_per_token * state.tokens, steps=state.step,
        peak_memory_bytes=peak_memory_bytes(tr.device), **throughput(state, tr.train.total_batch_size),
        reason=reason or None, keys=rd.TRAIN_KEYS))


# -----------------------------------------------------------------------------------------------------------

_RUN_LOCK = None  # the open lock file; held until the process exits


def unwritable(run_dir: Path) -> str | None:
    """Why the run dir cannot be made or written (checked on its nearest existing ancestor, creating nothing), or
    None. A read-only file system stops root too, where permissions would not."""
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only file system"
    if not os.access(existing, os.W_OK):
        return f"no permission to write in {existing}"
    return None


def acquire_run_lock(run_dir: Path) -> None:
    global _RUN_LOCK
    import fcntl
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _RUN_LOCK = open(run_dir / ".lock", "w")
    except OSError as e:  # a read-only or full file system, a file where the dir should be
        raise BadInput(f"--out {run_dir}: cannot write there ({e.strerror or e}); expected a writable directory") from None
    try:
        fcntl.flock(_RUN_LOCK, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"train: another process is training {run_dir}; waiting for it to finish", file=sys.stderr, flush=True)
        fcntl.flock(_RUN_LOCK, fcntl.LOCK_EX)


def compute_horizon(args, train: TrainConfig, scaling: int, flops_per_token: int) -> tuple[int, dict]:
    """(optimizer steps, the horizon as recorded) for a horizon given in compute: steps, tokens, FLOPs or a
    param/data ratio. A FLOPs budget buys fewer steps for a model that costs more per token, and more for one
    that costs less, so a change that saves compute is credited with the tokens it saves."""
    step_tokens = train.total_batch_size
    if args.num_iterations is not None:
        return args.num_iterations, {"num_iterations": args.num_iterations}
    if args.token_budget is not None:
        steps = max(1, -(-args.token_budget // step_tokens))
        return steps, {"token_budget": args.token_budget, "num_iterations": steps}
    if args.flops_budget is not None:
        steps = max(1, round(args.flops_budget / (flops_per_token * step_tokens)))
        return steps, {"flops_budget": args.flops_budget, "num_iterations": steps}
    ratio = args.param_data_ratio or train.param_data_ratio
    return max(1, round(ratio * scaling / step_tokens)), {"param_data_ratio": ratio}


def debiased(ema: float, steps: int) -> float | None:
    return None if steps == 0 else ema / (1 - 0.9 ** steps)


def throughput(state: LoopState, tokens_per_step: int) -> dict:
    """Training speed over the timed steps (nanochat's rule: the first UNTIMED_STEPS are not timed): tokens per
    second and seconds per optimizer step; None when no step was timed."""
    timed = state.step - UNTIMED_STEPS
    if timed <= 0 or state.train_time <= 0:
        return {"tok_per_s": None, "step_time_s": None}
    return {"tok_per_s": round(timed * tokens_per_step / state.train_time, 1),
            "step_time_s": round(state.train_time / timed, 6)}


def progress_line(step, num_iterations, budget, state: LoopState, loss, lr_mult, tok_per_s, mfu) -> str:
    if num_iterations is not None:
        where = f"step {step}/{num_iterations} ({100 * step / num_iterations:.0f}%)"
        eta = (num_iterations - step) * train_seconds_per_step(state, step)
    else:
        where = f"step {step} ({100 * min(1, state.train_time / budget):.0f}% of {budget:g}s)"
        eta = max(0.0, budget - state.train_time)
    mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
    return (f"{where} | loss {loss:.4f} | lr x{lr_mult:.2f} | {tok_per_s:,.0f} tok/s | mfu {mfu_text} | "
            f"train {state.train_time:.1f}s | eta {eta:.0f}s")


def train_seconds_per_step(state: LoopState, step: int) -> float:
    timed = step - UNTIMED_STEPS
    return state.train_time / timed if timed > 0 else 0.0


def command_line(world: int) -> str:
    args = shlex.join(sys.argv[1:])
    if world > 1:
        return f"torchrun --standalone --nproc_per_node={world} -m model.train {args}"
    return f"python -m model.train {args}"


def start_wandb(args, run_dir: Path, config: dict):
    """Weights & Biases, offline unless the user configured an online account (WANDB_API_KEY, or WANDB_MODE). Never
    required: a missing or broken wandb costs a warning, not the run. The W&B run id is derived from the machine, the
    run dir and its first start, so a run resumed from its checkpoint continues the same W&B run instead of starting a
    second one."""
    try:
        import wandb
    except Exception as e:  # noqa: BLE001 - wandb missing or broken: training goes on without it
        print(f"train: --wandb ignored ({type(e).__name__}: {e})", file=sys.stderr)
        return None
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    # This machine, this run dir and the run's first start (a resumed run keeps its created_at): stable across
    # resumes, distinct for another machine's run at the same path or a run dir deleted and trained again.
    identity = f"{socket.gethostname()}\n{run_dir.resolve()}\n{config.get('created_at')}"
    run_id = hashlib.sha256(identity.encode()).hexdigest()[:16]
    try:
        return wandb.init(project=os.environ.get("WANDB_PROJECT", "nanoresearch"), id=run_id, resume="allow",
                          name=args.wandb_name or run_dir.name, group=args.wandb_group, job_type=args.wandb_job_type,
                          tags=args.wandb_tag or None, dir=str(run_dir), config=config, mode=mode)
    except Exception as e:  # noqa: BLE001
        print(f"train: --wandb ignored ({type(e).__name__}: {e})", file=sys.stderr)
        return None


if __name__ == "__main__":
    sys.exit(main())
