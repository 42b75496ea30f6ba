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
import re
import types
import typing
from dataclasses import dataclass


class ConfigError(ValueError):
    """A bad configuration value or an unknown field. The message is one line, meant for users."""


# -----------------------------------------------------------------------------
# Every field is declared once, with its default, a one-line doc and its legal values (`setting`): validate()
# checks the legal values, and search_spaces/knobs.py takes a knob's doc from here and keeps its search range
# inside them. validate() adds only the checks that involve several fields.

@dataclass(frozen=True)
class Legal:
    """The legal values of a config field: an interval (either end open or closed, or absent), a set of choices or
    a regular expression for the whole string; `text` is what an error message says is expected."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False           # low itself is not legal
    high_open: bool = False          # high itself is not legal
    choices: tuple = ()
    pattern: str | None = None
    text: str = ""

    def __contains__(self, value) -> bool:
        if self.choices:
            return value in self.choices
        if self.pattern is not None:
            return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return False
        return self.high is None or not (value > self.high or self.high_open and value == self.high)

    @property
    def expected(self) -> str:
        return self.text or "one of " + ", ".join(map(str, self.choices))

    def check(self, name: str, value) -> None:
        if value not in self:
            raise ConfigError(f"{name}={value!r}: expected {self.expected}")


POSITIVE_INT = Legal(low=1, text="a positive integer")
NON_NEGATIVE_INT = Legal(low=0, text="a non-negative integer")
POSITIVE = Legal(low=0, low_open=True, text="a positive number")
NON_NEGATIVE = Legal(low=0, text="a non-negative number")
FRACTION = Legal(low=0, high=1, text="a fraction in [0, 1]")
BETA = Legal(low=0, high=1, high_open=True, text="a number in [0, 1)")  # momentum-like decays


def one_of(*choices) -> Legal:
    return Legal(choices=choices)


def setting(default, doc: str = "", legal: Legal | None = None):
    """A config field: its default, a one-line doc and its legal values (None: any value of the field's type)."""
    return dataclasses.field(default=default, metadata={"doc": doc, "legal": legal})


@dataclass
class ModelConfig:
    # --- shape (the depth dial sets model_dim and n_head; a tier sets vocab/sequence/head_dim) ---
    depth: int = setting(12, "number of transformer blocks", POSITIVE_INT)
    model_dim: int = setting(768, "residual stream width", POSITIVE_INT)
    n_head: int = setting(6, "query heads", POSITIVE_INT)
    n_kv_head: int = setting(6, "key/value heads: n_head = MHA, 1 = MQA, in between = GQA", POSITIVE_INT)
    head_dim: int = setting(128, "width of one attention head", POSITIVE_INT)
    aspect_ratio: int = setting(64, "model_dim ~= depth * aspect_ratio (before rounding to head_dim)")
    vocab_size: int = setting(32768, "tokenizer vocabulary size", POSITIVE_INT)
    sequence_len: int = setting(2048, "tokens per training sequence (the context)", POSITIVE_INT)
    mlp_ratio: int = setting(4, "ReLU^2 MLP hidden = mlp_ratio * model_dim", POSITIVE_INT)
    # --- attention ---
    window_pattern: str = setting(
        "SSSL", "sliding-window pattern tiled over layers (S short, L full; last layer always L)",
        Legal(pattern="(?i)[SL]+", text="a non-empty string of S and L, e.g. 'SSSL'"))
    short_window_frac: float = setting(0.25, "the short window as a fraction of the sequence length",
                                       Legal(low=0, high=1, low_open=True, text="a fraction in (0, 1]"))
    short_window_multiple: int = setting(128, "round the short window up to a multiple of this (nanochat: 128, "
                                              "FlashAttention-3's tile; 1 = no rounding)", POSITIVE_INT)
    rope_base: float = setting(100000.0, "rotary embedding base frequency",
                               Legal(low=1, low_open=True, text="a number > 1"))
    qk_scale: float = setting(1.2, "multiplier on q and k after QK-norm (sharper attention when larger)", POSITIVE)
    softcap: float = setting(15.0, "logit soft-cap: logits -> c*tanh(logits/c); 0 = off",
                             Legal(low=0, text="0 (off) or a positive cap"))
    attention_backend: str = setting("auto", "attention implementation (eager = plain matmul reference)",
                                     one_of("auto", "sdpa", "flex", "fa3", "eager"))
    # --- tweaks (nanochat's current recipe has them all on) ---
    value_embeds: bool = setting(True, "ResFormer value embeddings mixed into v on alternating layers (always the last)")
    ve_gate_channels: int = setting(12, "the per-head VE gate reads this many leading channels of x", POSITIVE_INT)
    ve_gate_range: float = setting(3.0, "value-embedding gate range: gate = range * sigmoid(.)", POSITIVE)
    smear: bool = setting(True, "mix the previous token's embedding into each position through a learned gate")
    smear_channels: int = setting(24, "the smear gate reads this many leading channels", POSITIVE_INT)
    backout: bool = setting(True, "subtract a learned fraction of the mid-layer residual before the final norm")
    backout_init: float = setting(0.2, "initial backout fraction")
    layer_lambdas: bool = setting(True, "learned per-layer resid/x0 scalars blending the input embedding back in "
                                        "(x <- resid_l * x + x0_l * x0 before each block)")
    resid_lambda_init: float = setting(1.15, "initial residual lambda of the first layer (decays linearly to "
                                             "resid_lambda_final at the last)")
    resid_lambda_final: float = setting(1.05, "residual lambda of the last layer")
    x0_lambda_init: float = setting(0.20, "initial x0 lambda of the first layer (decays to x0_lambda_final at the last)")
    x0_lambda_final: float = setting(0.05, "x0 lambda of the last layer")
    zero_init_proj: bool = setting(True, "attention/MLP output projections start at zero (blocks start as identity)")
    embedding_init_std: float = setting(0.8, "init std of the token embedding", NON_NEGATIVE)
    lm_head_init_std: float = setting(0.001, "init std of lm_head", NON_NEGATIVE)
    fc_init_scale: float = setting(0.4, "MLP input projection init relative to the other matrices", NON_NEGATIVE)
    init_per_param: bool = setting(False, "draw each parameter's init from its own (seed, name) generator (see GPT)")
    # --- numerics ---
    dtype: str = setting("auto", "compute dtype (auto = bf16 where bf16 matmuls are native: CUDA SM80+, "
                                     "CPUs with AVX512-BF16/AMX; else fp32)", one_of("auto", "float32", "bfloat16"))

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

    def scaling_params(self) -> int:
        """Matrix + lm_head parameters, by arithmetic (no model is built): what nanochat's scaling laws count, and
        what the dial scales batch, weight decay and the param/data horizon by."""
        d, kv = self.model_dim, self.n_kv_head * self.head_dim
        per_block = 2 * d * d + 2 * d * kv + 2 * self.mlp_ratio * d * d
        padded_vocab = -(-self.vocab_size // 64) * 64
        return self.depth * per_block + padded_vocab * d

    def short_window(self) -> int:
        """ceil(frac * sequence_len), rounded up to a multiple: 512 at sequence 2048, 128 at the cpu tier's 256."""
        window = math.ceil(self.short_window_frac * self.sequence_len)
        return -(-window // self.short_window_multiple) * self.short_window_multiple

    def window_sizes(self) -> list[int | None]:
        """Per-layer attention window (None = full causal). The last layer always sees the full context."""
        pattern = self.window_pattern.upper()
        sizes = [None if pattern[i % len(pattern)] == "L" else self.short_window() for i in range(self.depth)]
        sizes[-1] = None
        return sizes

    def effective_settings(self) -> dict:
        """The settings that decide the function this model computes and trains as: every field, except that the
        window settings (window_pattern, short_window_frac, short_window_multiple) count only through the per-layer
        windows they give, and a window at least as long as the sequence is full attention (the last layer's
        always is: at depth 1 every pattern is the same model). Equal effective settings, equal model."""
        out = to_dict(self)
        for key in ("window_pattern", "short_window_frac", "short_window_multiple"):
            del out[key]
        out["windows"] = [None if w is None or w >= self.sequence_len else w for w in self.window_sizes()]
        return out

    def has_value_embed(self, layer: int) -> bool:
        """Value embeddings on alternating layers, counted back from the last so the last layer always has one."""
        return self.value_embeds and layer % 2 == (self.depth - 1) % 2

    def backout_layer(self) -> int:
        """Whose output backout subtracts: nanochat's depth // 2, kept below the last layer so tiny models
        (depth 2-3) still get a real mid-layer residual instead of a no-op rescaling of the final one."""
        return max(0, min(self.depth // 2, self.depth - 2))

    def validate(self) -> None:
        check_types(self)
        check_legal(self)
        if self.n_head * self.head_dim != self.model_dim:
            raise ConfigError(f"model_dim={self.model_dim}: expected n_head * head_dim = {self.n_head} * {self.head_dim}")
        if self.n_kv_head > self.n_head or self.n_head % self.n_kv_head:
            divisors = [d for d in range(1, self.n_head + 1) if self.n_head % d == 0]
            raise ConfigError(f"n_kv_head={self.n_kv_head}: expected a divisor of n_head={self.n_head}, one of {divisors}")


@dataclass
class OptimConfig:
    # --- learning rates (nanochat's, tuned at d12; AdamW ones scale by (model_dim/768)^-0.5, all but gate_lr by
    # sqrt(batch/2^19)) ---
    matrix_lr: float = setting(0.02, "Muon learning rate for block matrices (before batch scaling)", NON_NEGATIVE)
    embedding_lr: float = setting(0.3, "AdamW learning rate for the token embedding (value embeddings get half)",
                                  NON_NEGATIVE)
    unembedding_lr: float = setting(0.008, "AdamW learning rate for lm_head", NON_NEGATIVE)
    scalar_lr: float = setting(0.5, "AdamW learning rate for the per-layer lambdas", NON_NEGATIVE)
    gate_lr: float = setting(0.2, "AdamW learning rate for the smear and backout gates (as nanochat: not scaled by "
                                  "batch or width)", NON_NEGATIVE)
    weight_decay: float = setting(0.28, "Muon decoupled weight decay (at d12's horizon; model.train rescales it)",
                                  NON_NEGATIVE)
    wd_schedule: str = setting("cosine", "weight decay schedule: to zero (cosine, linear) or constant",
                               one_of("cosine", "linear", "constant"))
    cautious_wd: bool = setting(True, "decay only coordinates where update and weight agree in sign")
    # --- Muon ---
    orthogonalizer: str = setting("polar_express", "Muon's orthogonalisation: quintic Newton-Schulz or Polar Express",
                                  one_of("polar_express", "newton_schulz"))
    ns_steps: int = setting(5, "orthogonalisation iterations", Legal(low=1, high=12, text="an integer in [1, 12]"))
    ortho_safety: float = setting(1.01, "normalise by ||G|| * safety so the top singular value starts inside the band",
                                  Legal(low=1, text="a number >= 1"))
    nesterov: bool = setting(True, "Nesterov momentum")
    momentum_start: float = setting(0.85, "Muon momentum before warm-up", BETA)
    momentum_peak: float = setting(0.97, "Muon momentum after warm-up", BETA)
    momentum_warmup_steps: int = setting(400, "steps to warm Muon momentum up from momentum_start", NON_NEGATIVE_INT)
    momentum_end: float = setting(0.90, "Muon momentum at the end, cooled to over the LR warm-down", BETA)
    momentum_schedule: str = setting(
        "nanochat", "how warm-up and warm-down meet: nanochat (warm up for momentum_warmup_steps whatever the LR "
                    "does; in the warm-down, momentum_peak -> momentum_end), or cool_from_warm (in the warm-down, blend "
                    "the warming-up value towards momentum_end)",
        one_of("nanochat", "cool_from_warm"))
    normuon: bool = setting(True, "NorMuon: normalise update rows by a running second moment")
    normuon_beta2: float = setting(0.9, "NorMuon's second-moment decay", BETA)
    muon_eq: bool = setting(True, "MuonEq: rescale each momentum row to the mean row norm before orthogonalising")
    muon_plus: bool = setting(True, "Muon+: rescale the orthogonalised update to Frobenius norm sqrt(min(rows, cols)), "
                                    "that of an exactly semi-orthogonal matrix")
    shape_scaling: bool = setting(True, "scale Muon's LR by sqrt(max(1, rows/cols))")

    def validate(self) -> None:
        check_types(self)
        check_legal(self)


@dataclass
class TrainConfig:
    total_batch_size: int = setting(524288, "tokens per optimizer step (all ranks, all micro-steps); reached by "
                                            "grad accumulation; 0 = from depth by nanochat's rule (auto_batch_size)",
                                    NON_NEGATIVE_INT)
    device_batch_size: int = setting(32, "sequences per forward pass per rank", POSITIVE_INT)
    auto_device_batch: bool = setting(True, "on CUDA: halve device_batch_size until a training step fits in memory "
                                            "(the total batch is kept by accumulation; the choice is in config.json)")
    warmup_steps: int = setting(40, "LR linear warm-up steps", NON_NEGATIVE_INT)
    warmdown_ratio: float = setting(0.65, "fraction of the run spent annealing the learning rate", FRACTION)
    final_lr_frac: float = setting(0.05, "LR at the end, as a fraction of the peak", FRACTION)
    param_data_ratio: float = setting(10.5, "tokens = ratio * scaling params, when no other horizon is given", POSITIVE)
    eval_every: int = setting(250, "steps between val bpb evaluations (and at the end)", NON_NEGATIVE_INT)
    eval_tokens: int = setting(10485760, "val tokens per evaluation", POSITIVE_INT)
    eval_spread: bool = setting(False, "val documents in a fixed shuffled order (a small set spans many documents)")
    core_every: int = setting(0, "steps between CORE evaluations (0 = off)", NON_NEGATIVE_INT)
    core_max_per_task: int = setting(500, "examples per CORE task during training (0 = all)", NON_NEGATIVE_INT)
    save_every: int = setting(0, "steps between checkpoints (0 = only at the end)", NON_NEGATIVE_INT)
    compile: bool = setting(False, "torch.compile the model")
    fp8: bool = setting(False, "fp8 matmuls for the block and head Linears (torchao, tensorwise scaling; model/fp8.py) "
                               "on an SM89+ GPU; bf16 elsewhere")
    scale_wd_with_depth: bool = setting(True, "rescale weight decay from d12 to this model and batch (nanochat's "
                                              "T_epoch rule, depth_scaled_weight_decay)")
    tokenizer_max_chars: int = setting(2_000_000_000, "training characters for the BPE tokenizer (nanochat's budget)",
                                       POSITIVE_INT)
    log_every: int = setting(10, "steps between progress lines", NON_NEGATIVE_INT)

    def validate(self) -> None:
        check_types(self)
        check_legal(self)


# -----------------------------------------------------------------------------
# The depth dial's scaling rules, as nanochat's scripts/base_train.py computes them (master 92d63d4): its LRs, batch
# and weight decay are tuned at d12 with a 2^19-token batch, and carried to other depths by
# - batch: B = 2^19 x (D / D_ref)^0.383 rounded to a power of two (the Power Lines fit, Bopt ~ D^0.383), where D and
#   D_ref are the compute-optimal horizons (ratio x scaling params) of the model and of d12: the ratio cancels, so
#   the batch depends on the model's size alone;
# - learning rates: x sqrt(B / 2^19) (model/optim.py);
# - weight decay: x sqrt(B / 2^19) x D_ref / D (T_epoch = B / (lr x wd x D) held constant).

REFERENCE_DEPTH = 12
REFERENCE_BATCH_TOKENS = 2 ** 19  # nanochat's LRs, batch and weight decay are tuned at this batch at d12
BATCH_EXPONENT = 0.383


def reference_config(config: ModelConfig) -> ModelConfig:
    """d12 with this model's vocabulary, sequence length and head size: where nanochat tuned its settings."""
    return ModelConfig.from_depth(REFERENCE_DEPTH, **{k: getattr(config, k) for k in
                                                      ("vocab_size", "sequence_len", "head_dim", "aspect_ratio",
                                                       "mlp_ratio")})


def auto_batch_size(config: ModelConfig) -> int:
    """Tokens per optimizer step for this model by nanochat's rule: 2^19 at d12, growing as size^0.383."""
    ratio = config.scaling_params() / reference_config(config).scaling_params()
    return 2 ** round(math.log2(REFERENCE_BATCH_TOKENS * ratio ** BATCH_EXPONENT))


def batch_lr_scale(total_batch_size: int) -> float:
    """What every learning rate is multiplied by at this batch: sqrt(B / 2^19) (AdamW's rule, used for Muon too)."""
    return math.sqrt(total_batch_size / REFERENCE_BATCH_TOKENS)


def depth_scaled_weight_decay(weight_decay: float, config: ModelConfig, total_batch_size: int) -> float:
    """nanochat's weight decay for this model and batch, from its d12 value (independent of the horizon trained)."""
    size = reference_config(config).scaling_params() / config.scaling_params()
    return weight_decay * batch_lr_scale(total_batch_size) * size


# -----------------------------------------------------------------------------
# Tiers: what the depth dial does not decide, per class of machine. The exact rungs, budgets and targets of a
# search live in experiments/ as data; these are the defaults `model.train --tier` applies.

TIERS: dict[str, dict[str, object]] = {
    # Measured on a 2-core CPU: at seq 256 and batch 8 x 256 tokens a depth-2 step takes a fraction of a second.
    # Its 32k-token val set is spread over the val shard's documents: the first 32k tokens of a shard of book
    # chunks are one or two books, and runs then differ by how well they predict those books (model/loader.py).
    "cpu": dict(vocab_size=8192, sequence_len=256, head_dim=64, device_batch_size=8, total_batch_size=8 * 256,
                eval_every=50, eval_tokens=16 * 256 * 8, eval_spread=True, log_every=10, compile=False,
                # Tuned here by its own sweeps, not carried from d12: weight decay is used as given.
                scale_wd_with_depth=False,
                # fp32 even where bf16 matmuls are native (1.25-1.66x faster here): in bf16 a change of matrix_lr
                # by 1e-3 sometimes sends a run down another path (d2 seed 4: +0.0071 bpb, fp32 -0.0001), which
                # widened the parametric null spread from ~0.0003 to 0.003-0.009, about the structural one (README).
                dtype="float32",
                # BPE at vocab 8192 needs far less than nanochat's 2B characters; 100M train in about a minute here.
                tokenizer_max_chars=100_000_000),
    # nanochat's single-node settings; the batch from depth (2^19 at d12, 2^20 at d20-d26).
    "gpu": dict(vocab_size=32768, sequence_len=2048, head_dim=128, device_batch_size=32, total_batch_size=0,
                eval_every=250, eval_tokens=10485760, log_every=10, compile=True),
}


# -----------------------------------------------------------------------------
# Overrides by name: `--set key=value` from the command line, or a dict from the harness.

CONFIG_CLASSES = (ModelConfig, OptimConfig, TrainConfig)


def resolve_configs(tier: dict[str, object], depth: int, overrides: dict[str, object],
                    train_flags: dict[str, object] | None = None) -> tuple[ModelConfig, OptimConfig, TrainConfig]:
    """The three configs a run trains with: the tier's settings, then the --set overrides (strings are parsed),
    then train flags that are not None (later wins); a total_batch_size of 0 becomes nanochat's batch for the
    depth. Each is validated (ConfigError)."""
    model_over, optim_over, train_over = split_overrides(overrides)
    train_values = {k: v for k, v in tier.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    train_values.update(train_over)
    train_values.update({k: v for k, v in (train_flags or {}).items() if v is not None})
    train = TrainConfig(**train_values)
    train.validate()
    model_values = {k: v for k, v in tier.items() if k in {f.name for f in dataclasses.fields(ModelConfig)}}
    model_values.update(model_over)
    model = ModelConfig.from_depth(depth, **model_values)
    optim = OptimConfig(**optim_over)
    optim.validate()
    if train.total_batch_size == 0:  # the tier (or --set) asks for nanochat's batch for this depth
        train = dataclasses.replace(train, total_batch_size=auto_batch_size(model))
    return model, optim, train


def field_owner(key: str) -> type:
    for cls in CONFIG_CLASSES:
        if key in {f.name for f in dataclasses.fields(cls)}:
            return cls
    known = sorted(f.name for cls in CONFIG_CLASSES for f in dataclasses.fields(cls))
    raise ConfigError(f"unknown config field {key!r}: expected one of {', '.join(known)}")


def config_field(key: str) -> dataclasses.Field:
    """The declaration of a field of any of the three configs: default, and metadata "doc" and "legal"."""
    return {f.name: f for f in dataclasses.fields(field_owner(key))}[key]


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


def check_legal(config) -> None:
    """Each field's value against the legal values its `setting` declares (after check_types)."""
    for f in dataclasses.fields(config):
        if f.metadata.get("legal") is not None:
            f.metadata["legal"].check(f.name, getattr(config, f.name))


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


__all__ = ["ModelConfig", "OptimConfig", "TrainConfig", "ConfigError", "Legal", "TIERS", "resolve_configs", "split_overrides",
           "parse_set_args", "field_owner", "config_field", "to_dict"]
