"""
Schedules for the learning rate, Muon's momentum and the weight decay.

They are functions of `progress` (the fraction of the run done: step / num_iterations for a fixed horizon,
training seconds / budget for a time budget) and, for warm-ups, of the step count. That one definition serves
both kinds of horizon.
"""

from __future__ import annotations

import math

from model.config import OptimConfig, TrainConfig


def lr_multiplier(step: int, progress: float, train: TrainConfig) -> float:
    """Linear warm-up over warmup_steps, flat, then a linear warm-down to final_lr_frac over the last
    warmdown_ratio of the run."""
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    warmdown_start = 1.0 - train.warmdown_ratio
    if progress <= warmdown_start or train.warmdown_ratio == 0:
        return 1.0
    remaining = max(0.0, 1.0 - progress) / train.warmdown_ratio
    return remaining + (1.0 - remaining) * train.final_lr_frac


def muon_momentum(step: int, progress: float, optim: OptimConfig, train: TrainConfig) -> float:
    """Warm up from momentum_start to momentum_peak over momentum_warmup_steps; during the LR warm-down, cool
    towards momentum_end (less momentum while the LR anneals).

    The two schedules differ only in runs whose warm-down starts before the warm-up ends (with nanochat's 400
    steps and warm-down ratio 0.65, runs shorter than ~1,150 steps: every cpu-tier run). nanochat's keeps warming
    up until step 400 and then jumps onto the peak -> end line; cool_from_warm blends the warming-up value towards
    momentum_end as the warm-down proceeds, so it never jumps."""
    warm = 1.0 if optim.momentum_warmup_steps == 0 else min(1.0, step / optim.momentum_warmup_steps)
    warmed = optim.momentum_start + (optim.momentum_peak - optim.momentum_start) * warm
    warmdown_start = 1.0 - train.warmdown_ratio
    in_warmdown = train.warmdown_ratio > 0 and progress > warmdown_start
    cool = min(1.0, (progress - warmdown_start) / train.warmdown_ratio) if in_warmdown else 0.0
    if optim.momentum_schedule == "nanochat":
        if warm < 1.0 or not in_warmdown:
            return warmed
        return optim.momentum_peak + (optim.momentum_end - optim.momentum_peak) * cool
    return warmed + (optim.momentum_end - warmed) * cool


def weight_decay_multiplier(progress: float, optim: OptimConfig) -> float:
    progress = min(max(progress, 0.0), 1.0)
    if optim.wd_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if optim.wd_schedule == "linear":
        return 1.0 - progress
    return 1.0


def apply_schedules(optimizer, step: int, progress: float, optim: OptimConfig, train: TrainConfig) -> float:
    """Set every group's LR (and Muon's momentum and weight decay) for this step; returns the LR multiplier."""
    lr_mult = lr_multiplier(step, progress, train)
    momentum = muon_momentum(step, progress, optim, train)
    wd_mult = weight_decay_multiplier(progress, optim)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lr_mult
        if group["kind"] == "muon":
            group["momentum"] = momentum
            group["weight_decay"] = group["initial_weight_decay"] * wd_mult
    return lr_mult
