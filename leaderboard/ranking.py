""""Best", defined once: which experiments of a search lead, for the terminal summary, the agent's prompt, the
dashboard and `harness.chat --best` alike.

An experiment stands where the ladder got it: the furthest rung at which it has a decision with a paired mean
difference from its control, and that difference there (val_bpb: lower is better; the latest decision at that rung,
so one more seed updates it). The best is the one furthest up the ladder, then the lowest mean difference there.
Paired differences, not raw val_bpb: each run is compared with the baseline on its own seed slot, which is what the
ladder decided on. The baseline and the search's nulls never stand: the baseline is the control, and a lucky null
is noise, not progress.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Standing:
    experiment_id: str
    rung: str                          # the furthest rung with a paired result
    rung_index: int                    # its place in the ladder (0 = first rung)
    mean_delta: float                  # the mean paired difference from the control there (negative = better)

    @property
    def key(self) -> tuple[int, float]:
        """Sort key, best first."""
        return (-self.rung_index, self.mean_delta)

    def beats_baseline(self) -> bool:
        """Worth the name "best": promoted past the first rung, or better than the baseline on average there."""
        return self.rung_index > 0 or self.mean_delta < 0


def standings(decisions: Iterable[Mapping[str, Any]], rungs: Sequence[str], exclude: Iterable[str] = ()) -> list[Standing]:
    """Each experiment's standing, best first, from its decisions in the order they were made (rows with
    `experiment_id`, `from_rung` and `mean_delta`, as `Store.decisions` returns them). `rungs`: the ladder's rung
    names in order (a rung not in it ranks below the first); `exclude`: the ids that never stand (the baseline,
    the nulls)."""
    index = {name: i for i, name in enumerate(rungs)}
    excluded = set(exclude)
    latest: dict[str, Standing] = {}
    for d in decisions:
        mean = d.get("mean_delta")
        if d["experiment_id"] in excluded or mean is None or not math.isfinite(mean):
            continue
        at = Standing(d["experiment_id"], d["from_rung"], index.get(d["from_rung"], -1), float(mean))
        held = latest.get(at.experiment_id)
        if held is None or at.rung_index >= held.rung_index:
            latest[at.experiment_id] = at
    return sorted(latest.values(), key=lambda s: (s.key, s.experiment_id))


def best(decisions: Iterable[Mapping[str, Any]], rungs: Sequence[str], exclude: Iterable[str] = ()) -> Standing | None:
    ranked = standings(decisions, rungs, exclude)
    return ranked[0] if ranked else None


def current_record(entries: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """A track's record to beat: the fastest of its entries marked as a record (a published reference or a speedrun
    that beat the record before it)."""
    records = [e for e in entries if e["is_record"] and e["time_to_target_mean"] is not None]
    return min(records, key=lambda e: e["time_to_target_mean"]) if records else None
