"""
Every knob a proposer may turn, declared once: its config field, type, search range or choices, kind of change.

A knob's name is the ModelConfig / OptimConfig / TrainConfig field it sets (so a tweak {"smear": false} is
exactly `--set smear=false`); its default and its one-line doc are that field's (model/config.py declares both,
with the field's legal values), and its search range must lie inside the field's legal values. A tier's baseline
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

Categories of change, which a search steers by (harness/steering.py: after a plateau the proposer must leave the
category it circled in; a category whose runs keep failing is paused): architecture (a model setting), optimizer (an
optimizer setting), schedule (how a setting moves over training: warmup, warmdown, the momentum schedule), patch (a
code change).
"""

from __future__ import annotations

from dataclasses import dataclass

from model.config import config_field, field_owner

TYPES = ("bool", "int", "float", "logfloat", "categorical")
KINDS = ("parametric", "structural")
CATEGORIES = ("architecture", "optimizer", "schedule", "patch")
# The training-schedule knobs (the rest of the optimizer and train fields are "optimizer").
SCHEDULE_KNOBS = frozenset({"momentum_warmup_steps", "momentum_schedule", "warmdown_ratio"})


@dataclass(frozen=True)
class Knob:
    name: str
    type: str                      # one of TYPES
    kind: str                      # one of KINDS: how a change of this knob perturbs training (see above)
    low: float | None = None       # the search range (int, float, logfloat) ...
    high: float | None = None
    choices: tuple = ()            # ... or the choices (categorical)
    doc: str = ""                  # "": the config field's doc

    def __post_init__(self):
        if not self.doc:
            object.__setattr__(self, "doc", config_field(self.name).metadata.get("doc", ""))

    @property
    def config(self) -> str:
        """Which config the knob sets: model, optim or train."""
        return {"ModelConfig": "model", "OptimConfig": "optim", "TrainConfig": "train"}[field_owner(self.name).__name__]

    @property
    def category(self) -> str:
        """architecture, optimizer or schedule (see CATEGORIES)."""
        if self.name in SCHEDULE_KNOBS:
            return "schedule"
        return "architecture" if self.config == "model" else "optimizer"

    @property
    def default(self):
        """nanochat's value: the field's default (None for n_kv_head, meaning 'as many as query heads')."""
        if self.name == "n_kv_head":
            return None
        return config_field(self.name).default


def _check(k: Knob) -> None:
    """A known type and kind, a real config field with a doc, and a search range (or choices) inside the field's
    legal values; a ValueError naming the knob otherwise."""
    def bad(why: str):
        return ValueError(f"knob {k.name!r}: {why}")

    if k.type not in TYPES or k.kind not in KINDS:
        raise bad(f"type {k.type!r} / kind {k.kind!r}: expected one of {TYPES} / {KINDS}")
    legal = config_field(k.name).metadata.get("legal")  # every knob sets a real config field
    if not k.doc:
        raise bad("no doc (its config field has none)")
    if k.type == "categorical":
        if not k.choices:
            raise bad("a categorical knob needs choices")
        values = [c for c in k.choices if c is not None]  # None: the config's own value (n_kv_head)
    elif k.type != "bool":
        if k.low is None or k.high is None or not k.low < k.high:
            raise bad(f"search range [{k.low}, {k.high}]: expected low < high")
        values = [k.low, k.high]
    else:
        values = []
    outside = [v for v in values if legal is not None and v not in legal]
    if outside:
        raise bad(f"{outside} outside the legal values of its config field ({legal.expected})")


def _declare(*knobs: Knob) -> dict[str, Knob]:
    for k in knobs:
        _check(k)
    return {k.name: k for k in knobs}


KNOBS: dict[str, Knob] = _declare(
    # --- architecture ---
    Knob("smear", "bool", "structural"),
    Knob("backout", "bool", "structural"),
    Knob("value_embeds", "bool", "structural"),
    Knob("layer_lambdas", "bool", "structural"),
    Knob("window_pattern", "categorical", "structural", choices=("SSSL", "SSL", "SL", "SLLL", "L")),
    Knob("short_window_frac", "float", "parametric", 0.125, 0.5),
    Knob("short_window_multiple", "categorical", "structural", choices=(128, 64, 1)),
    Knob("softcap", "categorical", "structural", choices=(0.0, 10.0, 15.0, 20.0, 30.0)),
    Knob("qk_scale", "float", "parametric", 0.8, 2.0),
    Knob("rope_base", "logfloat", "parametric", 1e3, 1e6),
    # The knob's null (the config's n_kv_head = n_head) is its own value, so it says what its choices mean.
    Knob("n_kv_head", "categorical", "structural", choices=(None, 2, 1),
         doc="key/value heads: null = as many as query heads (MHA), 2 = GQA, 1 = MQA"),
    Knob("x0_lambda_init", "float", "parametric", 0.0, 0.5),
    Knob("resid_lambda_init", "float", "parametric", 0.9, 1.3),
    Knob("backout_init", "float", "parametric", 0.0, 0.5),
    Knob("ve_gate_range", "float", "parametric", 1.0, 4.0),
    # --- optimizer ---
    Knob("orthogonalizer", "categorical", "structural", choices=("polar_express", "newton_schulz")),
    Knob("ns_steps", "int", "structural", 3, 8),
    Knob("normuon", "bool", "structural"),
    Knob("normuon_beta2", "float", "parametric", 0.8, 0.99),
    Knob("muon_eq", "bool", "structural"),
    Knob("muon_plus", "bool", "structural"),
    Knob("cautious_wd", "bool", "structural"),
    Knob("momentum_peak", "float", "parametric", 0.9, 0.99),
    Knob("momentum_warmup_steps", "int", "parametric", 0, 800),
    Knob("momentum_schedule", "categorical", "structural", choices=("nanochat", "cool_from_warm")),
    Knob("matrix_lr", "logfloat", "parametric", 0.003, 0.3),
    Knob("embedding_lr", "logfloat", "parametric", 0.03, 3.0),
    Knob("unembedding_lr", "logfloat", "parametric", 0.001, 0.1),
    Knob("gate_lr", "logfloat", "parametric", 0.01, 1.0),
    Knob("weight_decay", "float", "parametric", 0.0, 0.6),
    Knob("warmdown_ratio", "float", "parametric", 0.1, 0.9),
)

SPACES: dict[str, tuple[str, ...]] = {
    "architecture": ("smear", "backout", "value_embeds", "layer_lambdas", "window_pattern", "short_window_frac",
                     "short_window_multiple", "softcap", "qk_scale", "rope_base", "n_kv_head", "x0_lambda_init", "resid_lambda_init",
                     "backout_init", "ve_gate_range"),
    "optimizer": ("orthogonalizer", "ns_steps", "normuon", "normuon_beta2", "muon_eq", "muon_plus", "cautious_wd",
                  "momentum_peak", "momentum_warmup_steps", "momentum_schedule", "matrix_lr", "embedding_lr",
                  "unembedding_lr", "gate_lr", "weight_decay", "warmdown_ratio"),
}
SPACES["all"] = tuple(KNOBS)


def change_kind(tweaks: dict, patch: str | None = None) -> str:
    """The kind of a proposed change: structural if it carries a code patch or turns any structural knob, else
    parametric (an empty change, the baseline, counts as parametric: it moves nothing)."""
    if patch or any(KNOBS[name].kind == "structural" for name in tweaks if name in KNOBS):
        return "structural"
    return "parametric"


def change_categories(tweaks: dict, patch: str | None = None) -> frozenset[str]:
    """The categories a proposed change touches: its knobs' and, with a code patch, "patch"."""
    found = {KNOBS[name].category for name in tweaks if name in KNOBS}
    return frozenset(found | ({"patch"} if patch else set()))
