"""
The GPT: nanochat's architecture, with every tweak a switch in ModelConfig.

Always on (the architecture itself):
- rotary position embeddings, no learned positions; QK-norm (parameter-free RMSNorm on q and k)
- parameter-free RMSNorm, pre-norm blocks, no biases anywhere
- ReLU^2 MLP; untied token embedding and lm_head
Switches and values (see ModelConfig): rotary base, post-QK-norm scale, logit soft-cap, grouped-query attention,
sliding windows from a pattern string, value embeddings with a per-head gate, smear, backout, per-layer
resid/x0 lambdas, zero-initialised output projections, attention backend, compute dtype, and where each
parameter's initial values are drawn from (one random stream, or one per parameter name).

Precision: parameters stay fp32 (the optimizer's master weights); where bf16 matmuls are native (CUDA SM80+, CPUs
with AVX512-BF16 or AMX) activations run in bf16 and each Linear casts its weight to the activation dtype at use.
Logits and the loss are always fp32. (On a 2-core EPYC with AVX512-BF16 a depth-4 cpu-tier run trained 1.66x faster
in bf16 than in fp32; the cpu tier still pins fp32, because bf16 rounding made its parametric nulls diverge: README,
"Where the defaults come from".)
"""

from __future__ import annotations

import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.attention import attend, resolve_backend
from model.config import ModelConfig
from model.fused_loss import linear_softcap_cross_entropy
from model.hardware import native_bf16
from model.kv_cache import KVCache


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def compute_dtype(config: ModelConfig, device: torch.device) -> torch.dtype:
    """The activations' dtype: the config's, or with "auto" bf16 where bf16 matmuls are native, else fp32."""
    if config.dtype == "float32":
        return torch.float32
    if config.dtype == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if native_bf16(device) else torch.float32


class Linear(nn.Linear):
    """A bias-free Linear whose fp32 weight is cast to the activation dtype (bf16 compute, fp32 master weights)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) of x (B, T, H, D) by position-dependent angles."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.qk_scale = config.qk_scale
        self.c_q = Linear(config.model_dim, config.n_head * config.head_dim)
        self.c_k = Linear(config.model_dim, config.n_kv_head * config.head_dim)
        self.c_v = Linear(config.model_dim, config.n_kv_head * config.head_dim)
        self.c_proj = Linear(config.model_dim, config.model_dim)
        # Value embeddings are mixed into v through an input-dependent gate per kv head, reading a few channels.
        self.ve_gate_channels, self.ve_gate_range = config.ve_gate_channels, config.ve_gate_range
        self.ve_gate = Linear(config.ve_gate_channels, config.n_kv_head) if config.has_value_embed(layer) else None

    def forward(self, x, ve, cos, sin, window, backend, kv_cache: KVCache | None):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            gate = self.ve_gate_range * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))  # (B, T, Hkv)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # QK-norm bounds the attention logits; the scale then sharpens them (softmax scale stays 1/sqrt(D)).
        q, k = rms_norm(q) * self.qk_scale, rms_norm(k) * self.qk_scale
        q_offset = 0
        if kv_cache is not None:
            q_offset = kv_cache.pos
            k, v = kv_cache.update(self.layer, k, v)
        y = attend(q, k, v, window, q_offset, backend)
        return self.c_proj(y.reshape(B, T, -1))


class ReluSquared(torch.autograd.Function):
    """relu(x)^2 whose backward is one product, 2 * relu(x) * grad: autograd's pow + relu backward walks the
    (tokens x 4*dim) activations four times, which is a measurable share of a CPU step."""

    @staticmethod
    def forward(ctx, x):
        h = F.relu(x)
        ctx.save_for_backward(h)
        return h * h

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        return (grad * h).mul_(2.0)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = Linear(config.model_dim, config.mlp_ratio * config.model_dim)
        self.c_proj = Linear(config.mlp_ratio * config.model_dim, config.model_dim)

    def forward(self, x):
        return self.c_proj(ReluSquared.apply(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos, sin, window, backend, kv_cache):
        x = x + self.attn(rms_norm(x), ve, cos, sin, window, backend, kv_cache)
        x = x + self.mlp(rms_norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: ModelConfig, pad_vocab_to: int = 64):
        super().__init__()
        config.validate()
        self.config = config
        # Pad the embedding tables to a multiple of 64 for efficient kernels; logits are cropped back in forward.
        self.padded_vocab = -(-config.vocab_size // pad_vocab_to) * pad_vocab_to
        kv_dim = config.n_kv_head * config.head_dim
        self.wte = nn.Embedding(self.padded_vocab, config.model_dim)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.depth)])
        self.lm_head = Linear(config.model_dim, self.padded_vocab)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(self.padded_vocab, kv_dim)
                                           for i in range(config.depth) if config.has_value_embed(i)})
        if config.layer_lambdas:
            self.resid_lambdas = nn.Parameter(torch.ones(config.depth))
            self.x0_lambdas = nn.Parameter(torch.zeros(config.depth))
        if config.smear:
            self.smear_gate = Linear(config.smear_channels, 1)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if config.backout:
            self.backout_lambda = nn.Parameter(torch.zeros(1))
        self.window_sizes = config.window_sizes()
        # Rotary tables cover 10x the training context so generation can run past it; not saved in checkpoints.
        self.rotary_len = 10 * config.sequence_len
        cos, sin = self._rotary_tables(self.rotary_len, config.head_dim, config.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    @staticmethod
    def _rotary_tables(length: int, head_dim: int, base: float):
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
        return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]  # (1, T, 1, D/2)

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat's init. Matrices are uniform with the std of N(0, 1/model_dim) (no outliers); output
        projections start at zero so every block starts as the identity; lm_head starts tiny."""
        c = self.config
        rng = self._init_generators()
        nn.init.normal_(self.wte.weight, mean=0.0, std=c.embedding_init_std, generator=rng(self.wte.weight))
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=c.lm_head_init_std, generator=rng(self.lm_head.weight))
        s = 3 ** 0.5 * c.model_dim ** -0.5
        for block in self.blocks:
            for w in (block.attn.c_q.weight, block.attn.c_k.weight, block.attn.c_v.weight):
                nn.init.uniform_(w, -s, s, generator=rng(w))
            w = block.mlp.c_fc.weight
            nn.init.uniform_(w, -s * c.fc_init_scale, s * c.fc_init_scale, generator=rng(w))
            for w in (block.attn.c_proj.weight, block.mlp.c_proj.weight):
                if c.zero_init_proj:
                    nn.init.zeros_(w)
                else:
                    nn.init.uniform_(w, -s, s, generator=rng(w))
            if block.attn.ve_gate is not None:  # gates start just above neutral
                nn.init.uniform_(block.attn.ve_gate.weight, 0.0, 0.02, generator=rng(block.attn.ve_gate.weight))
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s, generator=rng(ve.weight))
        if c.layer_lambdas:
            frac = torch.arange(c.depth, dtype=torch.float32) / max(c.depth - 1, 1)
            self.resid_lambdas.copy_(c.resid_lambda_init + (c.resid_lambda_final - c.resid_lambda_init) * frac)
            self.x0_lambdas.copy_(c.x0_lambda_init + (c.x0_lambda_final - c.x0_lambda_init) * frac)
        if c.smear:  # the gate starts just above neutral, its strength (smear_lambda) at zero
            nn.init.uniform_(self.smear_gate.weight, 0.0, 0.02, generator=rng(self.smear_gate.weight))
            self.smear_lambda.zero_()
        if c.backout:
            self.backout_lambda.fill_(c.backout_init)

    def _init_generators(self):
        """Where each parameter's initial values come from. By default the global random stream in a fixed order
        (nanochat's): a change that adds, removes or reshapes a parameter shifts the stream for every parameter
        drawn after it. With init_per_param, each parameter draws from its own generator seeded by (the global
        seed, its name), so the parameters two configs share start identical (common random numbers)."""
        if not self.config.init_per_param:
            return lambda w: None
        names = {id(p): n for n, p in self.named_parameters()}
        base = torch.initial_seed()

        def rng(w: torch.Tensor) -> torch.Generator | None:
            if w.device.type == "meta":
                return None
            g = torch.Generator(device=w.device)
            g.manual_seed((base * 1_000_003 + zlib.crc32(names[id(w)].encode())) % (2 ** 63))
            return g
        return rng

    # ------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def compute_dtype(self) -> torch.dtype:
        return compute_dtype(self.config, self.device)

    def attention_backend(self) -> str:
        any_window = any(w is not None for w in self.window_sizes)
        return resolve_backend(self.config.attention_backend, self.device, any_window)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                loss_reduction: str = "mean") -> torch.Tensor:
        """idx (B, T) -> logits (B, T, vocab) in fp32; with targets (-1 = ignore) -> the cross-entropy loss
        (a scalar, or (B, T) with loss_reduction='none')."""
        c = self.config
        B, T = idx.shape
        dtype = self.compute_dtype()
        backend = self.attention_backend()
        pos = 0 if kv_cache is None else kv_cache.pos
        assert pos + T <= self.rotary_len, f"position {pos + T} beyond the rotary tables ({self.rotary_len})"
        cos, sin = self.cos[:, pos:pos + T].to(dtype), self.sin[:, pos:pos + T].to(dtype)

        x = rms_norm(self.wte(idx).to(dtype))
        if c.smear:
            x = self._smear(x, kv_cache)
        x0 = x  # the normalised embedding, blended back in before every block by the x0 lambdas
        x_mid = None
        backout_layer = c.backout_layer()
        for i, block in enumerate(self.blocks):
            if c.layer_lambdas:
                x = self.resid_lambdas[i].to(dtype) * x + self.x0_lambdas[i].to(dtype) * x0
            ve = self.value_embeds[str(i)](idx).to(dtype) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, self.window_sizes[i], backend, kv_cache)
            if c.backout and i == backout_layer:
                x_mid = x
        if kv_cache is not None:
            kv_cache.advance(T)
        if x_mid is not None:
            # Backout: remove part of the mid-layer residual (low-level features) before predicting.
            x = x - self.backout_lambda.to(dtype) * x_mid
        x = rms_norm(x)

        if targets is not None and x.device.type == "cpu":
            # On CPUs the full logits are the memory-bound bottleneck; see model/fused_loss.py. (On GPUs,
            # torch.compile fuses the same chain, so the plain path below is kept there.)
            loss = linear_softcap_cross_entropy(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1),
                                                c.vocab_size, c.softcap, loss_reduction)
            return loss.view(B, T) if loss_reduction == "none" else loss
        logits = self.lm_head(x)[..., :c.vocab_size].float()
        if c.softcap > 0:
            logits = c.softcap * torch.tanh(logits / c.softcap)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=loss_reduction)
        return loss.view(B, T) if loss_reduction == "none" else loss

    def _smear(self, x: torch.Tensor, kv_cache: KVCache | None) -> torch.Tensor:
        """Mix the previous token's embedding into each position through a learned gate (cheap bigram info)."""
        C = self.config.smear_channels
        lam = self.smear_lambda.to(x.dtype)
        prev = None if kv_cache is None else kv_cache.prev_embedding
        if kv_cache is not None:
            kv_cache.prev_embedding = x[:, -1:, :]
        if x.size(1) > 1:
            gate = lam * torch.sigmoid(self.smear_gate(x[:, 1:, :C]))
            smeared = x[:, 1:] + gate * x[:, :-1]
            first = x[:, :1]
            if prev is not None:  # continuing after a cached prefix: the first new token has a predecessor too
                first = first + lam * torch.sigmoid(self.smear_gate(first[..., :C])) * prev
            return torch.cat([first, smeared], dim=1)
        if prev is not None:
            return x + lam * torch.sigmoid(self.smear_gate(x[..., :C])) * prev
        return x

    # ------------------------------------------------------------------------------------------------
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimizer treatment: Muon for block matrices, AdamW (own LR each) for the rest."""
        groups = {
            "matrix": [p for p in self.blocks.parameters()],
            "embedding": [self.wte.weight],
            "value_embeds": [e.weight for e in self.value_embeds.values()],
            "lm_head": [self.lm_head.weight],
            "resid_lambdas": [self.resid_lambdas] if self.config.layer_lambdas else [],
            "x0_lambdas": [self.x0_lambdas] if self.config.layer_lambdas else [],
            "gates": ([self.smear_gate.weight, self.smear_lambda] if self.config.smear else [])
                     + ([self.backout_lambda] if self.config.backout else []),
        }
        assert sum(len(g) for g in groups.values()) == len(list(self.parameters())), "a parameter has no group"
        return groups

    def num_params(self) -> dict[str, int]:
        """Parameter counts by group, plus 'scaling' (matrices + lm_head: what scaling laws count) and 'total'."""
        counts = {name: sum(p.numel() for p in ps) for name, ps in self.param_groups().items()}
        counts["scaling"] = counts["matrix"] + counts["lm_head"]
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    def num_flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward): 6 per matmul weight (embedding lookups are free), plus
        the attention scores/values: 12 * n_head * head_dim * (keys seen, capped by the layer's window)."""
        c = self.config
        matmul_params = self.num_params()["scaling"]
        attention = sum(12 * c.n_head * c.head_dim * (c.sequence_len if w is None else min(w, c.sequence_len))
                        for w in self.window_sizes)
        return 6 * matmul_params + attention
