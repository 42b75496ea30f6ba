"""What machine a run is on: a one-line description for the records, peak FLOP/s for MFU, device sync."""

from __future__ import annotations

import functools
import os
import platform

import torch

# Dense bf16 peak FLOP/s (no sparsity), from the vendors' data sheets. Most specific names first.
PEAK_BF16_FLOPS = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM / HBM3
    ("H200", 989e12),
    ("A100", 312e12),
]


@functools.cache
def cpu_has_bf16_matmul() -> bool:
    """Does this CPU multiply bf16 natively (AVX512-BF16 / AMX)? Elsewhere bf16 matmuls are emulated and slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    """Are bf16 matmuls native here: CUDA SM80+ (Ampere and later), or a CPU with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and cpu_has_bf16_matmul()


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of one device, or None when unknown (CPUs, unlisted GPUs): MFU is then not reported."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if all(part in name for part in key.split()):
            return flops
    return None


def describe(device: torch.device, world_size: int = 1) -> str:
    if device.type == "cuda":
        return f"cuda: {world_size}x {torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    procs = f"{world_size} procs x " if world_size > 1 else ""
    return f"cpu: {procs}{os.cpu_count()} cores ({cpu})"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
