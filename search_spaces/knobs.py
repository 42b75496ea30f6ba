"""
Every knob a proposer may turn, declared once: its config field, type, range or choices, and a one-line doc.

A knob's name is the ModelConfig / OptimConfig / TrainConfig field it sets (so a tweak {"smear": false} is
exactly `--set smear=false`), and its default is that field's default: nanochat's recipe. A tier's baseline
recipe (experiments/tiers/*.toml) may move the default (e.g. the CPU tier's learning rates); proposals are
always expressed relative to the baseline of the tier they run on.

Types: bool, int (inclusive range), float (uniform range), logfloat (log-uniform range), categorical (choices).

Kinds of change, which set the noise a change is judged against (harness/noise.py):
- parametric: a continuous setting moved (a learning rate, a beta, an init scale, a window fraction). The run
  stays correlated with its paired baseline run (same init, same data, nearly the same updates), so even a
  large parametric change has a small paired spread, and a tiny one almost none.
- structural: a mechanism switched on or off or swapped (a module, a pattern, an algorithm, a head count). The
  trajectory decorrelates from its paired baseline about as much as another initialisation does.
A proposal is structural if any knob it turns is (or it carries a code patch), else parametric.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from model.config import CONFIG_CLASSES, field_owner

TYPES = ("bool", "int", "float", "logfloat", "categorical")
KINDS = ("parametric", "structural")


@dataclass(frozen=True)
class Knob:
    name: str
    type: str                      # one of TYPES
    kind: str                      # one of KINDS: how a change of this knob perturbs training (see above)
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
        assert k.type in TYPES and k.kind in KINDS, k
        field_owner(k.name)  # every knob sets a real config field
        if k.type == "categorical":
            assert k.choices, k
        elif k.type != "bool":
            assert k.low is not None and k.high is not None and k.low < k.high, k
    return {k.name: k for k in knobs}


KNOBS: dict[str, Knob] = _declare(
    # --- architecture ---
    Knob("smear", "bool", "structural", "mix the previous token's embedding into each position through a learned gate"),
    Knob("backout", "bool", "structural", "subtract a learned fraction of the mid-layer residual before the final norm"),
    Knob("value_embeds", "bool", "structural", "ResFormer value embeddings mixed into v on alternating layers (always the last)"),
    Knob("layer_lambdas", "bool", "structural", "learned per-layer resid/x0 scalars blending the input embedding back in"),
    Knob("window_pattern", "categorical", "structural", "sliding-window pattern tiled over layers (S short, L full; last layer always L)",
         choices=("SSSL", "SSL", "SL", "SLLL", "L")),
    Knob("short_window_frac", "float", "parametric", "the short window as a fraction of the sequence length", 0.125, 0.5),
    Knob("softcap", "categorical", "structural", "logit soft-cap: logits -> c*tanh(logits/c); 0 = off", choices=(0.0, 10.0, 15.0, 20.0, 30.0)),
    Knob("qk_scale", "float", "parametric", "multiplier on q and k after QK-norm (sharper attention when larger)", 0.8, 2.0),
    Knob("rope_base", "logfloat", "parametric", "rotary embedding base frequency", 1e3, 1e6),
    Knob("n_kv_head", "categorical", "structural", "key/value heads: null = as many as query heads (MHA), 2 = GQA, 1 = MQA",
         choices=(None, 2, 1)),
    Knob("x0_lambda_init", "float", "parametric", "initial x0 lambda of the first layer (decays to x0_lambda_final at the last)", 0.0, 0.5),
    Knob("resid_lambda_init", "float", "parametric", "initial residual lambda of the first layer", 0.9, 1.3),
    Knob("backout_init", "float", "parametric", "initial backout fraction", 0.0, 0.5),
    Knob("ve_gate_range", "float", "parametric", "value-embedding gate range: gate = range * sigmoid(.)", 1.0, 4.0),
    # --- optimizer ---
    Knob("orthogonalizer", "categorical", "structural", "Muon's orthogonalisation: quintic Newton-Schulz or Polar Express",
         choices=("polar_express", "newton_schulz")),
    Knob("ns_steps", "int", "structural", "orthogonalisation iterations", 3, 8),
    Knob("normuon", "bool", "structural", "NorMuon: normalise update rows by a running second moment"),
    Knob("normuon_beta2", "float", "parametric", "NorMuon's second-moment decay", 0.8, 0.99),
    Knob("muon_eq", "bool", "structural", "MuonEq: equilibrate momentum rows before orthogonalising"),
    Knob("cautious_wd", "bool", "structural", "decay only coordinates where update and weight agree in sign"),
    Knob("momentum_peak", "float", "parametric", "Muon momentum after warm-up", 0.9, 0.99),
    Knob("momentum_warmup_steps", "int", "parametric", "steps to warm Muon momentum up from momentum_start", 0, 800),
    Knob("matrix_lr", "logfloat", "parametric", "Muon learning rate for block matrices (before batch scaling)", 0.003, 0.3),
    Knob("embedding_lr", "logfloat", "parametric", "AdamW learning rate for the token embedding (value embeddings get half)", 0.03, 3.0),
    Knob("unembedding_lr", "logfloat", "parametric", "AdamW learning rate for lm_head", 0.001, 0.1),
    Knob("weight_decay", "float", "parametric", "Muon decoupled weight decay", 0.0, 0.6),
    Knob("warmdown_ratio", "float", "parametric", "fraction of the run spent annealing the learning rate", 0.1, 0.9),
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


def change_kind(tweaks: dict, patch: str | None = None) -> str:
    """The kind of a proposed change: structural if it carries a code patch or turns any structural knob, else
    parametric (an empty change, the baseline, counts as parametric: it moves nothing)."""
    if patch or any(KNOBS[name].kind == "structural" for name in tweaks if name in KNOBS):
        return "structural"
    return "parametric"
