"""
An experiment: a proposed change (tweaks on top of a recipe, optionally a code patch) and its identity.

The id is a content hash of the canonical spec: sorted tweaks, recipe, tier, code version, patch and (for A/A
calibration replicas only) a replica number. The same change proposed twice, by any proposer or worker, gets
the same id, so its finished runs are found and never repeated.

Seeds are paired by *slot*: slot s of a candidate is compared with slot s of the baseline, which runs seed s.
A normal candidate also runs seed s (same init, same data order: the paired design). A *replica* of the baseline
(the search's noise-floor runs, and A/A calibration proposals) runs the baseline's own recipe with the same data
order (data seed s) but another initialisation (seed s + seed_offset): a change that does nothing still perturbs
the trajectory, and that is the noise a paired comparison has to see through.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leaderboard import experiment_id

AA_SEED_STRIDE = 1000  # replica r initialises with seed r * 1000 + slot
NOISE_FLOOR_REPLICA = 999  # the search's own noise-floor replica of the baseline


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
    replica: int = 0                   # > 0: an A/A replica of the baseline
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
    def seed_offset(self) -> int:
        return self.replica * AA_SEED_STRIDE

    def seed(self, slot: int) -> int:
        """The init seed of this experiment's run on a slot (the run key's seed)."""
        return slot + self.seed_offset

    def data_seed(self, slot: int) -> int:
        """The data order of a slot: the same for every experiment, so runs on a slot see the same batches."""
        return slot

    def describe(self) -> str:
        if self.replica == NOISE_FLOOR_REPLICA:
            return "baseline, another init (noise floor)"
        if self.replica:
            return f"A/A replica {self.replica}"
        if self.is_baseline:
            return "baseline"
        parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(self.tweaks.items())]
        if len(parts) > 4:
            parts = parts[:3] + [f"... +{len(parts) - 3} more"]
        return ", ".join(parts or ["no tweaks"]) + (" + patch" if self.patch else "")

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
