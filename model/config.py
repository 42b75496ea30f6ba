"""
Configuration: the depth dial, every architectural tweak as a switch, the optimizer and the training schedule.

Three dataclasses, each owning one concern:
- ModelConfig: shapes and architecture switches (what `GPT` builds).
- OptimConfig: MuonAdamW and its variants (what `build_optimizer` builds).
- TrainConfig: batch, schedule and evaluation cadence (what `model.train` runs).

The depth dial (`ModelConfig.from_depth`) derives width and heads from depth, following nanochat:
model_dim = depth * aspect_ratio rounded up to a multiple of head_dim, n_head = model_dim / head_dim.
Defaults are nanochat's current recipe. A *tier* (cpu / gpu) fixes what the dial does not: vocab, sequence
length, head dim, batch. Everything can be overridden by name (`--set key=value`), and every value is checked
so a typo fails loudly with the field name and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass


class ConfigError(ValueError):
    """A bad configuration value or an unknown field. The message is one line, meant for users."""


@dataclass
class ModelConfig:
    # --- shape (the depth dial sets model_dim and n_head; a tier sets vocab/sequence/head_dim) ---
    depth: int = 12                  # number of transformer blocks
    model_dim: int = 768             # residual stream width
    n_head: int = 6                  # query heads
    n_kv_head: int = 6               # key/value heads: n_head = MHA, 1 = MQA, in between = GQA
    head_dim: int = 128
    aspect_ratio: int = 64           # model_dim ~= depth * aspect_ratio (before rounding to head_dim)
    vocab_size: int = 32768
    sequence_len: int = 2048
    mlp_ratio: int = 4               # ReLU^2 MLP hidden = mlp_ratio * model_dim
    # --- attention ---
    window_pattern: str = "SSSL"     # tiled over layers: S = short sliding window, L = full; last layer always L
    short_window_frac: float = 0.25  # short window = this fraction of sequence_len (nanochat: a quarter)
    rope_base: float = 100000.0
    qk_scale: float = 1.2            # q and k are each multiplied by this after QK-norm (sharper attention)
    softcap: float = 15.0            # logits -> softcap * tanh(logits / softcap); 0 = off
    attention_backend: str = "auto"  # auto | sdpa | flex | fa3 | eager (eager = plain matmul reference)
    # --- tweaks (nanochat's current recipe has them all on) ---
    value_embeds: bool = True        # ResFormer value embeddings on alternating layers (always the last)
    ve_gate_channels: int = 12       # the per-head VE gate reads this many leading channels of x
    ve_gate_range: float = 3.0       # VE gate = ve_gate_range * sigmoid(...), so in (0, ve_gate_range)
    smear: bool = True               # mix the previous token's embedding in through a learned gate
    smear_channels: int = 24         # the smear gate reads this many leading channels
    backout: bool = True             # subtract a learned fraction of the mid-layer residual before the final norm
    backout_init: float = 0.2
    layer_lambdas: bool = True       # per-layer resid/x0 scalars: x <- resid_l * x + x0_l * x0 before each block
    resid_lambda_init: float = 1.15  # resid lambdas decay linearly from this at the first layer ...
    resid_lambda_final: float = 1.05  # ... to this at the last layer
    x0_lambda_init: float = 0.20
    x0_lambda_final: float = 0.05
    zero_init_proj: bool = True      # attention/MLP output projections start at zero (blocks start as identity)
    embedding_init_std: float = 0.8
    lm_head_init_std: float = 0.001
    fc_init_scale: float = 0.4       # MLP input projection init relative to the other matrices
    init_per_param: bool = False     # draw each parameter's init from its own (seed, name) generator (see GPT)
    # --- numerics ---
    dtype: str = "auto"              # auto (bf16 on CUDA SM80+, else fp32) | float32 | bfloat16

    @classmethod
    def from_depth(cls, depth: int, **overrides) -> ModelConfig:
        """The depth dial: derive model_dim and n_head from depth, keeping every override the caller gives."""
        check_fields(cls, overrides)
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ConfigError(f"depth={depth!r}: expected a positive integer")
        head_dim = overrides.get("head_dim", cls.head_dim)
        aspect_ratio = overrides.get("aspect_ratio", cls.aspect_ratio)
        if not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
            raise ConfigError(f"head_dim={head_dim!r}: expected a positive even integer (rotary splits it in halves)")
        model_dim = overrides.get("model_dim") or math.ceil(depth * aspect_ratio / head_dim) * head_dim
        n_head = overrides.get("n_head") or model_dim // head_dim
        values = dict(depth=depth, model_dim=model_dim, n_head=n_head, n_kv_head=n_head)
        values.update(overrides)
        config = cls(**values)
        config.validate()
        return config

    @property
    def n_layer(self) -> int:
        return self.depth

    def short_window(self) -> int:
        return max(1, round(self.short_window_frac * self.sequence_len))

    def window_sizes(self) -> list[int | None]:
        """Per-layer attention window (None = full causal). The last layer always sees the full context."""
        pattern = self.window_pattern.upper()
        sizes = [None if pattern[i % len(pattern)] == "L" else self.short_window() for i in range(self.depth)]
        sizes[-1] = None
        return sizes

    def has_value_embed(self, layer: int) -> bool:
        """Value embeddings on alternating layers, counted back from the last so the last layer always has one."""
        return self.value_embeds and layer % 2 == (self.depth - 1) % 2

    def backout_layer(self) -> int:
        """Whose output backout subtracts: nanochat's depth // 2, kept below the last layer so tiny models
        (depth 2-3) still get a real mid-layer residual instead of a no-op rescaling of the final one."""
        return max(0, min(self.depth // 2, self.depth - 2))

    def validate(self) -> None:
        check_types(self)
        positive = ["depth", "model_dim", "n_head", "n_kv_head", "head_dim", "vocab_size", "sequence_len",
                    "mlp_ratio", "ve_gate_channels", "smear_channels"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected a positive integer")
        if self.n_head * self.head_dim != self.model_dim:
            raise ConfigError(f"model_dim={self.model_dim}: expected n_head * head_dim = {self.n_head} * {self.head_dim}")
        if self.n_kv_head > self.n_head or self.n_head % self.n_kv_head:
            divisors = [d for d in range(1, self.n_head + 1) if self.n_head % d == 0]
            raise ConfigError(f"n_kv_head={self.n_kv_head}: expected a divisor of n_head={self.n_head}, one of {divisors}")
        if not self.window_pattern or any(c not in "SL" for c in self.window_pattern.upper()):
            raise ConfigError(f"window_pattern={self.window_pattern!r}: expected a non-empty string of S and L, e.g. 'SSSL'")
        if not 0 < self.short_window_frac <= 1:
            raise ConfigError(f"short_window_frac={self.short_window_frac}: expected a fraction in (0, 1]")
        if self.rope_base <= 1:
            raise ConfigError(f"rope_base={self.rope_base}: expected a number > 1")
        if self.qk_scale <= 0:
            raise ConfigError(f"qk_scale={self.qk_scale}: expected a positive number")
        if self.softcap < 0:
            raise ConfigError(f"softcap={self.softcap}: expected 0 (off) or a positive cap")
        if self.ve_gate_range <= 0:
            raise ConfigError(f"ve_gate_range={self.ve_gate_range}: expected a positive number")
        for name in ["embedding_init_std", "lm_head_init_std", "fc_init_scale"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a non-negative number")
        check_choice("attention_backend", self.attention_backend, ["auto", "sdpa", "flex", "fa3", "eager"])
        check_choice("dtype", self.dtype, ["auto", "float32", "bfloat16"])


@dataclass
class OptimConfig:
    # --- learning rates (nanochat's, tuned at d12; AdamW ones scale by (model_dim/768)^-0.5, all by sqrt(batch/2^19)) ---
    matrix_lr: float = 0.02          # Muon, 2-D block matrices
    embedding_lr: float = 0.3        # AdamW, token embedding (value embeddings get half)
    unembedding_lr: float = 0.008    # AdamW, lm_head
    scalar_lr: float = 0.5           # AdamW, per-layer lambdas
    weight_decay: float = 0.28       # Muon decoupled weight decay at d12's horizon; model.train rescales it
    wd_schedule: str = "cosine"      # cosine (to zero) | linear (to zero) | constant
    cautious_wd: bool = True         # decay only coordinates where the update and the weight agree in sign
    # --- Muon ---
    orthogonalizer: str = "polar_express"  # polar_express | newton_schulz
    ns_steps: int = 5
    ortho_safety: float = 1.02       # normalise by ||G|| * safety so the top singular value starts inside the band
    nesterov: bool = True
    momentum_start: float = 0.85     # Muon momentum warms up from here ...
    momentum_peak: float = 0.97      # ... to here over momentum_warmup_steps ...
    momentum_warmup_steps: int = 400
    momentum_end: float = 0.90       # ... and cools to here over the LR warm-down
    normuon: bool = True             # NorMuon: per-row (or column) second-moment normalisation after orthogonalising
    normuon_beta2: float = 0.9
    muon_eq: bool = False            # MuonEq: normalise the rows of the momentum before orthogonalising
    shape_scaling: bool = True       # scale Muon's LR by sqrt(max(1, rows/cols))

    def validate(self) -> None:
        check_types(self)
        for name in ["matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "weight_decay"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a non-negative number")
        check_choice("orthogonalizer", self.orthogonalizer, ["polar_express", "newton_schulz"])
        check_choice("wd_schedule", self.wd_schedule, ["cosine", "linear", "constant"])
        if not 1 <= self.ns_steps <= 12:
            raise ConfigError(f"ns_steps={self.ns_steps}: expected an integer in [1, 12]")
        if self.ortho_safety < 1:
            raise ConfigError(f"ortho_safety={self.ortho_safety}: expected a number >= 1")
        for name in ["momentum_start", "momentum_peak", "momentum_end", "normuon_beta2"]:
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a number in [0, 1)")
        if self.momentum_warmup_steps < 0:
            raise ConfigError(f"momentum_warmup_steps={self.momentum_warmup_steps}: expected a non-negative integer")


@dataclass
class TrainConfig:
    total_batch_size: int = 524288   # tokens per optimizer step (all ranks, all micro-steps); reached by grad accumulation
    device_batch_size: int = 32      # sequences per forward pass per rank
    warmup_steps: int = 40           # LR linear warm-up
    warmdown_ratio: float = 0.65     # fraction of the run spent in the linear LR warm-down
    final_lr_frac: float = 0.05      # LR at the end, as a fraction of the peak
    param_data_ratio: float = 10.5   # tokens = ratio * scaling params, when no other horizon is given
    eval_every: int = 250            # steps between val bpb evaluations (and at the end)
    eval_tokens: int = 10485760      # val tokens per evaluation
    eval_spread: bool = False        # val documents in a fixed shuffled order (a small set spans many documents)
    core_every: int = 0              # steps between CORE evaluations (0 = off)
    core_max_per_task: int = 500     # examples per CORE task during training (0 = all)
    save_every: int = 0              # steps between checkpoints (0 = only at the end)
    compile: bool = False            # torch.compile the model
    scale_wd_to_horizon: bool = True  # rescale weight decay from d12's horizon to this run's (T_epoch rule)
    tokenizer_max_chars: int = 2_000_000_000  # training characters for the BPE tokenizer (nanochat's budget)
    log_every: int = 10              # steps between progress lines

    def validate(self) -> None:
        check_types(self)
        for name in ["total_batch_size", "device_batch_size", "eval_tokens", "tokenizer_max_chars"]:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a positive integer")
        for name in ["warmup_steps", "eval_every", "core_every", "save_every", "log_every", "core_max_per_task"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a non-negative integer")
        if not 0 <= self.warmdown_ratio <= 1:
            raise ConfigError(f"warmdown_ratio={self.warmdown_ratio}: expected a fraction in [0, 1]")
        if not 0 <= self.final_lr_frac <= 1:
            raise ConfigError(f"final_lr_frac={self.final_lr_frac}: expected a fraction in [0, 1]")
        if self.param_data_ratio <= 0:
            raise ConfigError(f"param_data_ratio={self.param_data_ratio}: expected a positive number")


# -----------------------------------------------------------------------------
# Tiers: what the depth dial does not decide, per class of machine. The exact rungs, budgets and targets of a
# search live in experiments/ as data; these are the defaults `model.train --tier` applies.

TIERS: dict[str, dict[str, object]] = {
    # Measured on a 2-core CPU: at seq 256 and batch 8 x 256 tokens a depth-2 step takes a fraction of a second.
    # Its 32k-token val set is spread over the val shard's documents: the first 32k tokens of a shard of book
    # chunks are one or two books, and runs then differ by how well they predict those books (model/loader.py).
    "cpu": dict(vocab_size=8192, sequence_len=256, head_dim=64, device_batch_size=8, total_batch_size=8 * 256,
                eval_every=50, eval_tokens=16 * 256 * 8, eval_spread=True, log_every=10, compile=False,
                # d12's horizon says nothing about minutes-long CPU runs: weight decay is used as given.
                scale_wd_to_horizon=False,
                # BPE at vocab 8192 needs far less than nanochat's 2B characters; 100M train in about a minute here.
                tokenizer_max_chars=100_000_000),
    # nanochat's single-node settings.
    "gpu": dict(vocab_size=32768, sequence_len=2048, head_dim=128, device_batch_size=32, total_batch_size=524288,
                eval_every=250, eval_tokens=10485760, log_every=10, compile=True),
}


# -----------------------------------------------------------------------------
# Overrides by name: `--set key=value` from the command line, or a dict from the harness.

CONFIG_CLASSES = (ModelConfig, OptimConfig, TrainConfig)


def field_owner(key: str) -> type:
    for cls in CONFIG_CLASSES:
        if key in {f.name for f in dataclasses.fields(cls)}:
            return cls
    known = sorted(f.name for cls in CONFIG_CLASSES for f in dataclasses.fields(cls))
    raise ConfigError(f"unknown config field {key!r}: expected one of {', '.join(known)}")


def parse_value(cls: type, key: str, text: str) -> object:
    """Parse a command-line string into the field's declared type (bool accepts true/false/1/0/on/off)."""
    kind = field_types(cls)[key]
    lowered = text.strip().lower()
    if kind is bool:
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r}: expected a boolean (true/false)")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected an integer") from None
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"{key}={text!r}: expected a finite number")
        return value
    return text


def split_overrides(overrides: dict[str, object]) -> tuple[dict, dict, dict]:
    """Route {field: value} to (model, optim, train) dicts, parsing strings to the field's type."""
    routed: dict[type, dict] = {cls: {} for cls in CONFIG_CLASSES}
    for key, value in overrides.items():
        cls = field_owner(key)
        routed[cls][key] = parse_value(cls, key, value) if isinstance(value, str) else value
    return routed[ModelConfig], routed[OptimConfig], routed[TrainConfig]


def parse_set_args(items: list[str]) -> dict[str, str]:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'}; malformed items are a ConfigError."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value
    return out


# -----------------------------------------------------------------------------
# Validation helpers shared by the three dataclasses.

def field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    out = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else []
        out[name] = args[0] if args else hint
    return out


def check_fields(cls: type, values: dict) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown {cls.__name__} field {key!r}: expected one of {', '.join(sorted(known))}")


def check_types(config) -> None:
    for name, kind in field_types(type(config)).items():
        value = getattr(config, name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(config, name, value)
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{name}={value!r}: expected {kind.__name__}")
        if kind is float and not math.isfinite(value):
            raise ConfigError(f"{name}={value!r}: expected a finite number")


def check_choice(name: str, value: str, choices: list[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(choices)}")


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


__all__ = ["ModelConfig", "OptimConfig", "TrainConfig", "ConfigError", "TIERS", "split_overrides",
           "parse_set_args", "field_owner", "to_dict"]
