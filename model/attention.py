"""
Causal attention with optional sliding windows, behind one function and several interchangeable backends.

`attend(q, k, v, window, q_offset, backend)` takes q (B, T, H, D) and k, v (B, S, Hkv, D) in the layout the
projections produce (FA3's native layout), handles grouped-query attention (H a multiple of Hkv), and returns
(B, T, H, D). Query t (absolute position q_offset + t) attends to keys at positions p with p <= q_offset + t and,
with a window W, q_offset + t - p <= W: the W previous tokens plus itself (FA3's window_size=(W, 0) semantics).
q_offset > 0 is the KV-cache case: the first S - T keys come from the cache.

Backends:
- eager: plain matmul + softmax in fp32. Slow; the numerical reference the others are tested against.
- sdpa:  torch's scaled_dot_product_attention. Flash kernel for full causal, explicit boolean mask for windows.
         The CPU default.
- flex:  FlexAttention with a block mask: skips fully-masked blocks, so sliding windows actually save compute.
         The CUDA default when some layer uses a short window and FA3 is not importable.
- fa3:   Flash Attention 3 (`flash_attn_interface`, Hopper) when importable: fastest for windows on H100.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

BACKENDS = ("eager", "sdpa", "flex", "fa3")


def fa3_available() -> bool:
    try:
        import flash_attn_interface  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


def resolve_backend(requested: str, device: torch.device, any_window: bool) -> str:
    """Pick the fastest correct backend for this device when the config says 'auto'."""
    if requested != "auto":
        if requested == "fa3" and not fa3_available():
            raise RuntimeError("attention_backend='fa3' but flash_attn_interface is not importable on a Hopper GPU")
        return requested
    if device.type != "cuda":
        return "sdpa"
    if fa3_available():
        return "fa3"
    return "flex" if any_window else "sdpa"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None, q_offset: int = 0,
           backend: str = "sdpa") -> torch.Tensor:
    T, S = q.size(1), k.size(1)
    assert S == q_offset + T, f"keys ({S}) must cover the cache ({q_offset}) plus the queries ({T})"
    if window is not None and window >= S:
        window = None  # a window wider than everything in view is the full causal mask
    if backend == "fa3" and q_offset == 0:
        return _attend_fa3(q, k, v, window)
    if backend == "flex" and (q_offset == 0 or not q.is_cuda):
        # On CUDA, decoding with a growing cache would recompile the flex kernel per length: use SDPA there.
        return _attend_flex(q, k, v, window, q_offset)
    if backend == "eager":
        return _attend_eager(q, k, v, window, q_offset)
    return _attend_sdpa(q, k, v, window, q_offset)


@functools.lru_cache(maxsize=64)
def window_mask(T: int, S: int, q_offset: int, window: int | None, device: torch.device) -> torch.Tensor:
    """Boolean (T, S) mask, True where query t may attend to key s."""
    q_pos = torch.arange(T, device=device).unsqueeze(1) + q_offset
    k_pos = torch.arange(S, device=device).unsqueeze(0)
    allowed = k_pos <= q_pos
    if window is not None:
        allowed = allowed & (q_pos - k_pos <= window)
    return allowed


def _attend_sdpa(q, k, v, window, q_offset):
    T, S = q.size(1), k.size(1)
    gqa = q.size(2) != k.size(2)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if window is None and q_offset == 0:
        y = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=gqa)
    elif window is None and T == 1:
        y = F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=gqa)  # one new token sees the whole cache
    else:
        mask = window_mask(T, S, q_offset, window, q.device)
        y = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=gqa)
    return y.transpose(1, 2)


def _attend_eager(q, k, v, window, q_offset):
    T, S, H, D = q.size(1), k.size(1), q.size(2), q.size(3)
    repeat = H // k.size(2)
    qt = q.transpose(1, 2).float()
    kt = k.transpose(1, 2).float().repeat_interleave(repeat, dim=1)
    vt = v.transpose(1, 2).float().repeat_interleave(repeat, dim=1)
    scores = (qt @ kt.transpose(-1, -2)) / math.sqrt(D)
    scores = scores.masked_fill(~window_mask(T, S, q_offset, window, q.device), float("-inf"))
    y = torch.softmax(scores, dim=-1) @ vt
    return y.to(q.dtype).transpose(1, 2)


@functools.lru_cache(maxsize=32)
def _flex_block_mask(T: int, S: int, q_offset: int, window: int | None, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        q_pos = q_idx + q_offset
        allowed = kv_idx <= q_pos
        if window is not None:
            allowed = allowed & (q_pos - kv_idx <= window)
        return allowed

    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=T, KV_LEN=S, device=device)


@functools.cache
def _flex_kernel(compiled: bool):
    import warnings

    from torch.nn.attention.flex_attention import flex_attention
    if compiled:
        return torch.compile(flex_attention, dynamic=False)
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    return flex_attention


def _attend_flex(q, k, v, window, q_offset):
    gqa = q.size(2) != k.size(2)
    block_mask = _flex_block_mask(q.size(1), k.size(1), q_offset, window, q.device)
    kernel = _flex_kernel(q.is_cuda)
    y = kernel(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask, enable_gqa=gqa)
    return y.transpose(1, 2)


def _attend_fa3(q, k, v, window):
    import flash_attn_interface
    y = flash_attn_interface.flash_attn_func(q, k, v, causal=True, window_size=(-1 if window is None else window, 0))
    return y[0] if isinstance(y, tuple) else y
