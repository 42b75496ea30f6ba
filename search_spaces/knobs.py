"""
Every knob a proposer may turn, declared once: its config field, type, range or choices, and a one-line doc.

A knob's name is the ModelConfig / OptimConfig / TrainConfig field it sets (so a tweak {"smear": false} is
exactly `--set smear=false`), and its default is that field's default: nanochat's recipe. A tier's baseline
recipe (experiments/tiers/*.toml) may move the default (e.g. the CPU tier's learning rates); proposals are
always expressed relative to the baseline of the tier they run on.

Kinds: bool, int (inclusive range), float (uniform range), logfloat (log-uniform range), categorical (choices).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from model.config import CONFIG_CLASSES, field_owner

KINDS = ("bool", "int", "float", "logfloat", "categorical")


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    @property
    def config(self) -> str:
        """Which config the knob sets: model, optim or train."""
        return {"ModelConfig": "model", "OptimConfig": "optim", "TrainConfig": "train"}[field_owner(self.name).__name__]

    @property
    def default(self):
        """nanochat's value: the field's default (None for n_kv_head, meaning 'as many as query heads')."""
        if self.name == "n_kv_head":
            return None
        field = {f.name: f for cls in CONFIG_CLASSES for f in dataclasses.fields(cls)}[self.name]
        return field.default


def _declare(*knobs: Knob) -> dict[str, Knob]:
    for k in knobs:
        assert k.kind in KINDS, k
        field_owner(k.name)  # every knob sets a real config field
        if k.kind == "categorical":
            assert k.choices, k
        elif k.kind != "bool":
            assert k.low is not None and k.high is not None and k.low < k.high, k
    return {k.name: k for k in knobs}


KNOBS: dict[str, Knob] = _declare(
    # --- architecture ---
    Knob("smear", "bool", "mix the previous token's embedding into each position through a learned gate"),
    Knob("backout", "bool", "subtract a learned fraction of the mid-layer residual before the final norm"),
    Knob("value_embeds", "bool", "ResFormer value embeddings mixed into v on alternating layers (always the last)"),
    Knob("layer_lambdas", "bool", "learned per-layer resid/x0 scalars blending the input embedding back in"),
    Knob("window_pattern", "categorical", "sliding-window pattern tiled over layers (S short, L full; last layer always L)",
         choices=("SSSL", "SSL", "SL", "SLLL", "L")),
    Knob("short_window_frac", "float", "the short window as a fraction of the sequence length", 0.125, 0.5),
    Knob("softcap", "categorical", "logit soft-cap: logits -> c*tanh(logits/c); 0 = off", choices=(0.0, 10.0, 15.0, 20.0, 30.0)),
    Knob("qk_scale", "float", "multiplier on q and k after QK-norm (sharper attention when larger)", 0.8, 2.0),
    Knob("rope_base", "logfloat", "rotary embedding base frequency", 1e3, 1e6),
    Knob("n_kv_head", "categorical", "key/value heads: null = as many as query heads (MHA), 2 = GQA, 1 = MQA",
         choices=(None, 2, 1)),
    Knob("x0_lambda_init", "float", "initial x0 lambda of the first layer (decays to x0_lambda_final at the last)", 0.0, 0.5),
    Knob("resid_lambda_init", "float", "initial residual lambda of the first layer", 0.9, 1.3),
    Knob("backout_init", "float", "initial backout fraction", 0.0, 0.5),
    Knob("ve_gate_range", "float", "value-embedding gate range: gate = range * sigmoid(.)", 1.0, 4.0),
    # --- optimizer ---
    Knob("orthogonalizer", "categorical", "Muon's orthogonalisation: quintic Newton-Schulz or Polar Express",
         choices=("polar_express", "newton_schulz")),
    Knob("ns_steps", "int", "orthogonalisation iterations", 3, 8),
    Knob("normuon", "bool", "NorMuon: normalise update rows by a running second moment"),
    Knob("normuon_beta2", "float", "NorMuon's second-moment decay", 0.8, 0.99),
    Knob("muon_eq", "bool", "MuonEq: equilibrate momentum rows before orthogonalising"),
    Knob("cautious_wd", "bool", "decay only coordinates where update and weight agree in sign"),
    Knob("momentum_peak", "float", "Muon momentum after warm-up", 0.9, 0.99),
    Knob("momentum_warmup_steps", "int", "steps to warm Muon momentum up from momentum_start", 0, 800),
    Knob("matrix_lr", "logfloat", "Muon learning rate for block matrices (before batch scaling)", 0.003, 0.3),
    Knob("embedding_lr", "logfloat", "AdamW learning rate for the token embedding (value embeddings get half)", 0.03, 3.0),
    Knob("unembedding_lr", "logfloat", "AdamW learning rate for lm_head", 0.001, 0.1),
    Knob("weight_decay", "float", "Muon decoupled weight decay", 0.0, 0.6),
    Knob("warmdown_ratio", "float", "fraction of the run spent annealing the learning rate", 0.1, 0.9),
)

SPACES: dict[str, tuple[str, ...]] = {
    "architecture": ("smear", "backout", "value_embeds", "layer_lambdas", "window_pattern", "short_window_frac",
                     "softcap", "qk_scale", "rope_base", "n_kv_head", "x0_lambda_init", "resid_lambda_init",
                     "backout_init", "ve_gate_range"),
    "optimizer": ("orthogonalizer", "ns_steps", "normuon", "normuon_beta2", "muon_eq", "cautious_wd", "momentum_peak",
                  "momentum_warmup_steps", "matrix_lr", "embedding_lr", "unembedding_lr", "weight_decay",
                  "warmdown_ratio"),
}
SPACES["all"] = tuple(KNOBS)
