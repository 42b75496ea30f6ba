"""What callers hand to `Store.record_*`: one dataclass per kind of row, field names = column names.

Validation happens here, at construction, so a bad value fails with a one-line error naming it before
anything touches the database.
"""

import math
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from leaderboard.errors import LeaderboardError
from leaderboard.schema import CHANGE_KINDS, RUN_STATUSES, VERDICTS

# Columns of metric_points a caller may give (anything else in a metrics.jsonl line is ignored).
POINT_FIELDS = ("step", "tokens", "elapsed_train_s", "train_loss", "val_bpb", "core", "tok_per_s", "mfu")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise LeaderboardError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def as_row(record: Any) -> dict[str, Any]:
    """The record's fields as a column -> value dict (shallow: JSON values are passed through)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


@dataclass
class Experiment:
    id: str
    name: str
    tweaks: dict[str, Any] = field(default_factory=dict)
    parent_id: str | None = None
    rationale: str | None = None
    proposer: str = "manual"
    code_version: str | None = None
    patch: str | None = None
    extra: dict[str, Any] | None = None
    created_at: datetime | None = None  # None: now

    def __post_init__(self):
        _require(isinstance(self.id, str) and 0 < len(self.id) <= 64, f"experiment id {self.id!r}: expected 1-64 characters")
        _require(isinstance(self.tweaks, dict), f"experiment {self.id} tweaks {self.tweaks!r}: expected a dict")


@dataclass
class Run:
    experiment_id: str
    rung: str
    seed: int
    status: str
    depth: int | None = None
    failure_class: str | None = None
    reason: str | None = None
    hardware: str | None = None
    world_size: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    config: dict[str, Any] | None = None
    run_dir: str | None = None
    val_bpb: float | None = None
    core: float | None = None
    total_training_time: float | None = None
    time_to_target: float | None = None
    tokens: int | None = None
    flops: float | None = None
    peak_memory_bytes: int | None = None
    steps: int | None = None
    tok_per_s: float | None = None
    loaded: bool | None = None
    cost: float | None = None
    log_tail: str | None = None
    sealed: dict[str, Any] | None = None  # a patched run's sealed re-score (schema.runs.sealed)
    search_id: int | None = None

    def __post_init__(self):
        key = f"run ({self.experiment_id}, {self.rung}, seed {self.seed})"
        _require(self.status in RUN_STATUSES, f"{key} status {self.status!r}: expected one of {', '.join(RUN_STATUSES)}")
        _require(_is_int(self.seed), f"{key} seed {self.seed!r}: expected an integer")
        _require(isinstance(self.rung, str) and self.rung != "", f"{key} rung {self.rung!r}: expected a rung name like 'd2'")
        for name in ("depth", "world_size", "tokens", "peak_memory_bytes", "steps", "search_id"):
            value = getattr(self, name)
            _require(value is None or _is_int(value), f"{key} {name} {value!r}: expected an integer or null")
        for name in ("val_bpb", "core", "total_training_time", "time_to_target", "flops", "tok_per_s", "cost"):
            value = getattr(self, name)
            _require(value is None or (isinstance(value, int | float) and not isinstance(value, bool)),
                     f"{key} {name} {value!r}: expected a number or null")
        _require(self.loaded is None or isinstance(self.loaded, bool), f"{key} loaded {self.loaded!r}: expected true, false or null")

    @property
    def finished(self) -> bool:
        return self.status != "running"


def check_point(point: dict[str, Any], where: str) -> dict[str, Any]:
    """One metric point as a metric_points row (known columns only); `where` names it in errors."""
    _require(isinstance(point, dict), f"{where}: expected a JSON object, got {point!r}")
    _require(_is_int(point.get("step")), f"{where}: step {point.get('step')!r}: expected an integer")
    row = {name: point.get(name) for name in POINT_FIELDS}
    for name in POINT_FIELDS[1:]:
        value = row[name]
        _require(value is None or (isinstance(value, int | float) and not isinstance(value, bool)),
                 f"{where}: {name} {value!r}: expected a number or null")
    if isinstance(row["tokens"], float):  # tokens are counted; a float is fine only when it is whole
        _require(math.isfinite(row["tokens"]) and row["tokens"].is_integer(), f"{where}: tokens {row['tokens']!r}: expected an integer")
        row["tokens"] = int(row["tokens"])
    return row


@dataclass
class Decision:
    experiment_id: str
    from_rung: str
    verdict: str
    to_rung: str | None = None
    search_id: int | None = None
    baseline_experiment_id: str | None = None
    deltas: list[float] | dict[str, float] | None = None
    mean_delta: float | None = None
    std_error: float | None = None
    p_value: float | None = None
    n: int | None = None
    alpha: float | None = None
    min_effect: float | None = None
    noise_floor: float | None = None  # the null spread of the change's kind at the rung
    kind: str | None = None           # parametric | structural
    spread: float | None = None       # the sd of paired differences the test used
    df: float | None = None
    mde: float | None = None          # minimum detectable effect (bpb)
    compute_multiplier: float | None = None
    multiplier_extrapolated: bool | None = None
    reason: str | None = None         # why, in words (the ladder's sentence), the numbers above in it
    created_at: datetime | None = None

    def __post_init__(self):
        _require(self.verdict in VERDICTS, f"decision verdict {self.verdict!r}: expected one of {', '.join(VERDICTS)}")
        _require(self.kind is None or self.kind in CHANGE_KINDS,
                 f"decision kind {self.kind!r}: expected one of {', '.join(CHANGE_KINDS)}")


@dataclass
class RejectedProposal:
    """A proposal a search turned away, with why (payload: the proposal as it came, any JSON)."""
    search_id: int
    proposer: str
    reason: str
    payload: dict[str, Any] | None = None
    created_at: datetime | None = None

    def __post_init__(self):
        _require(_is_int(self.search_id), f"rejected proposal search_id {self.search_id!r}: expected an integer")
        _require(isinstance(self.proposer, str) and 0 < len(self.proposer) <= 64,
                 f"rejected proposal proposer {self.proposer!r}: expected 1-64 characters")
        _require(isinstance(self.reason, str) and self.reason.strip() != "",
                 f"rejected proposal reason {self.reason!r}: expected a non-empty string")
        _require(self.payload is None or isinstance(self.payload, dict),
                 f"rejected proposal payload {self.payload!r}: expected a JSON object or null")


@dataclass
class Track:
    name: str
    metric: str
    target: float | None = None
    description: str | None = None
    depth: int | None = None
    hardware: str | None = None
    timing_rule: str | None = None
    config: dict[str, Any] | None = None


@dataclass
class Entry:
    track: str
    recipe: str
    experiment_id: str | None = None
    seeds: int | None = None
    time_to_target_mean: float | None = None
    time_to_target_std: float | None = None
    metric_mean: float | None = None
    metric_std: float | None = None
    val_bpb: float | None = None
    p_value: float | None = None
    is_record: bool = False
    code_version: str | None = None
    command: str | None = None
    source: str | None = None
    run_ids: list[int] | None = None
    created_at: datetime | None = None
