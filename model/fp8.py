"""
fp8 training: the block and head matmuls in float8 with tensorwise dynamic scaling, as nanochat's record runs train.

Through torchao's float8 training (`convert_to_float8_training`): each eligible Linear becomes a Float8Linear that
quantizes its input and weight to e4m3 and its output gradient to e5m2 with one scale per tensor (amax), and
multiplies with the GPU's fp8 kernels; the master weights stay fp32 and the optimizer is unchanged. nanochat reports
1.17x more tokens/s at d26 (740K vs 630K) for a slightly weaker step.

Eligible (nanochat's filter): a Linear whose in and out features are multiples of 16 (the fp8 kernels need it) and at
least 128 (smaller matmuls gain nothing), so the value-embedding and smear gates, which read a dozen channels, stay
in bf16. Evaluation runs in bf16 (`bf16_linears`): val_bpb and CORE measure the model, not the fp8 arithmetic, and
checkpoints hold the same tensors either way.

fp8 needs an SM89+ GPU (H100: SM90); elsewhere `model.train --set fp8=true` trains in bf16 and says so. On a CPU the
conversion can be emulated (`emulate=True`: fp8 rounding in software), which is how the tests check it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

MIN_FEATURES = 128


def eligible(module: nn.Module, fqn: str = "") -> bool:
    """Whether a module is converted: a Linear with both dimensions multiples of 16 and at least MIN_FEATURES."""
    return (isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0
            and min(module.in_features, module.out_features) >= MIN_FEATURES)


def supported(device: torch.device) -> str | None:
    """Why fp8 cannot train on `device`, or None when it can."""
    if device.type != "cuda":
        return f"fp8 needs a CUDA GPU (this run is on {device.type})"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"fp8 needs an SM89+ GPU (H100, L40S, RTX 4090); {torch.cuda.get_device_name(device)} is SM{major}{minor}"
    return None


def convert(model: nn.Module, emulate: bool = False) -> int:
    """Swap every eligible Linear of `model` for torchao's Float8Linear (tensorwise scaling), in place, keeping the
    same weight Parameters (so an optimizer built before or after sees the same tensors). Returns how many."""
    import dataclasses

    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    config = Float8LinearConfig.from_recipe_name("tensorwise")
    if emulate:
        config = dataclasses.replace(config, emulate=True)
    convert_to_float8_training(model, config=config, module_filter_fn=eligible)
    return count(model)


def count(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if type(m).__name__ == "Float8Linear")


@contextlib.contextmanager
def bf16_linears(model: nn.Module) -> Iterator[None]:
    """Within the block, the model's Float8Linear modules compute as plain Linears (same weights): evaluation in bf16."""
    swapped = []
    for name, module in list(model.named_modules()):
        if type(module).__name__ != "Float8Linear":
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        plain = _Plain(module.weight)
        setattr(parent, attr, plain)
        swapped.append((parent, attr, module))
    try:
        yield
    finally:
        for parent, attr, module in swapped:
            setattr(parent, attr, module)


class _Plain(nn.Module):
    """A bias-free linear over a borrowed weight, cast to the activation's dtype (as model.gpt.Linear computes)."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.to(x.dtype))
