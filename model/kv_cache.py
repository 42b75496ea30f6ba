"""
The key/value cache for generation: prefill once, then decode one token at a time.

It holds, per layer, the (already rotated and normalised) keys and values of every position seen so far, the
current position (which also offsets the rotary embedding), and smear's state: the previous token's normalised
embedding, which the next token mixes in. `expand` clones a prefilled cache into N independent rows so N samples
can continue from one prompt.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, batch_size: int, num_layers: int, n_kv_head: int, head_dim: int, max_len: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (num_layers, batch_size, max_len, n_kv_head, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0
        self.prev_embedding: torch.Tensor | None = None  # (B, 1, C), smear's previous-token state

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int) -> KVCache:
        c = model.config
        return cls(batch_size, c.depth, c.n_kv_head, c.head_dim, max_len, model.device, model.compute_dtype())

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' keys/values for `layer`; return all keys/values so far (views)."""
        T = k.size(1)
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions needed, max_len={self.max_len}")
        self.k[layer, :, self.pos:end] = k
        self.v[layer, :, self.pos:end] = v
        return self.k[layer, :, :end], self.v[layer, :, :end]

    def advance(self, T: int) -> None:
        self.pos += T

    def expand(self, n: int) -> KVCache:
        """A cache with n copies of this (batch 1) cache, each free to continue differently."""
        assert self.k.size(1) == 1, "expand() replicates a single prefilled row"
        out = KVCache.__new__(KVCache)
        out.k = self.k.expand(-1, n, -1, -1, -1).clone()
        out.v = self.v.expand(-1, n, -1, -1, -1).clone()
        out.max_len, out.pos = self.max_len, self.pos
        out.prev_embedding = None if self.prev_embedding is None else self.prev_embedding.expand(n, -1, -1).clone()
        return out
