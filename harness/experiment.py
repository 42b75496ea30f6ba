"""
An experiment: a proposed change (tweaks on top of a recipe, optionally a code patch) and its identity.

The id is a content hash of the canonical spec: sorted tweaks, recipe, tier, code version, patch and (for A/A
calibration replicas only) a replica number. The same change proposed twice, by any proposer or worker, gets
the same id, so its finished runs are found and never repeated.

Seeds are paired by *slot*: slot s of a candidate is compared with slot s of the baseline, which runs seed
seed_base + s (a search's --seed-base shifts every slot, so repeated searches of one question use disjoint
seeds). A normal candidate runs the same seed (same init, same data order: the paired design).

A *replica* is a null: a change that does nothing, run to measure the noise a paired comparison has to see
through (the search's own null runs at every rung, and A/A calibration proposals). There is one per kind of
change (search_spaces/knobs.py):
- a structural null is the baseline recipe with another initialisation (seed + replica x AA_SEED_STRIDE) on the
  same data order: it decorrelates from its paired baseline run as a structural change does;
- a parametric null is the baseline with one setting perturbed by a factor too small to matter
  (PARAMETRIC_NULL_EPSILON), on the baseline's own seed: it stays correlated as a parametric change does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from leaderboard import experiment_id
from search_spaces import change_kind

AA_SEED_STRIDE = 1000  # a structural null replica r initialises with seed r * 1000 + the slot's seed
NOISE_FLOOR_REPLICA = 999  # the search's own null runs of each kind
# Parametric nulls move one setting by a relative amount too small to matter: halving matrix_lr moves val_bpb by
# ~0.02 at the cpu tier's first rung, so 1e-3 of it is worth ~1e-5 bpb, yet it perturbs every update as a real
# parametric change does. The search's own parametric null is matrix_lr x (1 + 1e-3); A/A null r moves setting
# (r - 1) % 8 by -1e-3 on its first cycle through them, +2e-3 on the second, -2e-3, +3e-3, ... (all distinct).
PARAMETRIC_NULL_EPSILON = 1e-3
PARAMETRIC_NULL_SETTINGS = ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "weight_decay",
                            "warmdown_ratio", "momentum_peak", "qk_scale")


def parametric_null_tweaks(replica: int, baseline_values: dict) -> dict:
    """The perturbation of parametric null replica `replica`, relative to the baseline's values
    (`baseline_values`: the tier's and recipe's overrides; nanochat's defaults for the rest)."""
    from model.config import CONFIG_CLASSES
    if replica == NOISE_FLOOR_REPLICA:
        name, factor = "matrix_lr", 1 + PARAMETRIC_NULL_EPSILON
    else:
        cycle = (replica - 1) // len(PARAMETRIC_NULL_SETTINGS)
        name = PARAMETRIC_NULL_SETTINGS[(replica - 1) % len(PARAMETRIC_NULL_SETTINGS)]
        factor = 1 + (1 if cycle % 2 else -1) * PARAMETRIC_NULL_EPSILON * (1 + (cycle + 1) // 2)
    defaults = {f.name: f.default for cls in CONFIG_CLASSES for f in dataclasses.fields(cls)}
    return {name: float(baseline_values.get(name, defaults[name])) * factor}


def baseline_name(recipe: str) -> str:
    """The display name of a recipe's baseline: "baseline" for the default recipe, else which recipe it is."""
    return "baseline" if recipe == "baseline" else f"baseline ({recipe})"


@dataclass
class Experiment:
    tweaks: dict
    tier: str
    recipe: str = "baseline"
    code_version: str = "unknown"
    proposer: str = "manual"
    rationale: str | None = None
    name: str | None = None
    parent_id: str | None = None
    patch: str | None = None
    replica: int = 0                   # > 0: a null (see the module docstring); with tweaks: a parametric null
    extra: dict = field(default_factory=dict)

    @property
    def spec(self) -> dict:
        spec = {"tweaks": dict(sorted(self.tweaks.items())), "recipe": self.recipe, "tier": self.tier,
                "code_version": self.code_version}
        if self.patch:
            spec["patch"] = self.patch
        if self.replica:
            spec["aa_replica"] = self.replica
        return spec

    @property
    def id(self) -> str:
        return experiment_id(self.spec)

    @property
    def is_baseline(self) -> bool:
        return not self.tweaks and not self.patch and not self.replica

    @property
    def null_kind(self) -> str | None:
        """structural | parametric for a null replica, None for anything else."""
        if not self.replica:
            return None
        return "parametric" if self.tweaks else "structural"

    @property
    def kind(self) -> str:
        """The kind of change, which sets the noise it is judged against: a null's own kind, else the kind of its
        tweaks (structural when any knob it turns is, or it carries a patch)."""
        return self.null_kind or change_kind(self.tweaks, self.patch)

    @property
    def seed_offset(self) -> int:
        return self.replica * AA_SEED_STRIDE if self.null_kind == "structural" else 0

    def seed(self, slot: int, seed_base: int = 0) -> int:
        """The init seed of this experiment's run on a slot (the run key's seed)."""
        return seed_base + slot + self.seed_offset

    def slot(self, seed: int, seed_base: int = 0) -> int:
        """The slot of a run key's seed (the inverse of `seed`)."""
        return seed - seed_base - self.seed_offset

    def data_seed(self, slot: int, seed_base: int = 0) -> int:
        """The data order of a slot: the same for every experiment, so runs on a slot see the same batches."""
        return seed_base + slot

    def describe(self) -> str:
        if self.replica:
            change = "another init" if self.null_kind == "structural" else self.describe_tweaks()
            who = "null" if self.replica == NOISE_FLOOR_REPLICA else f"A/A null {self.replica}"
            return f"{who} ({self.null_kind}): baseline, {change}"
        if self.is_baseline:
            return "baseline"
        return self.describe_tweaks() + (" + patch" if self.patch else "")

    def describe_tweaks(self) -> str:
        parts = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(self.tweaks.items())]
        if len(parts) > 4:
            parts = parts[:3] + [f"... +{len(parts) - 3} more"]
        return ", ".join(parts or ["no tweaks"])

    def overrides(self, baseline: dict, recipe_overrides: dict) -> dict:
        """Every --set this experiment's runs get: tier baseline, then recipe, then tweaks (later wins).
        n_kv_head=None is the baseline (as many kv heads as query heads), so it is not passed."""
        merged = {**baseline, **recipe_overrides, **self.tweaks}
        return {k: v for k, v in merged.items() if v is not None}

    def record(self):
        """The leaderboard row for this experiment."""
        from leaderboard import Experiment as ExperimentRow
        return ExperimentRow(id=self.id, name=self.name or self.describe(), tweaks=dict(sorted(self.tweaks.items())),
                             parent_id=self.parent_id, rationale=self.rationale, proposer=self.proposer,
                             code_version=self.code_version, patch=self.patch,
                             extra={**self.extra, "recipe": self.recipe, "tier": self.tier, "replica": self.replica})


def format_set(key: str, value) -> str:
    """A --set argument: booleans lower-case, floats in full precision."""
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    if isinstance(value, float):
        return f"{key}={value!r}"
    return f"{key}={value}"
