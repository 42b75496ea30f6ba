"""A/A calibration: null proposals of both kinds of change, to measure how often the ladder promotes nothing.

`--aa N` proposes N structural nulls (the baseline recipe with another initialisation on the same data order) and
N parametric nulls (the baseline with one setting moved by a factor too small to matter, on the baseline's own
seed), alternating; see harness/experiment.py. Neither is better than the baseline, so the fraction of each kind
the ladder promotes is its false-promotion rate for changes of that kind: the number to compare with the stated
alpha. (An identical-config replica would be bit-identical to the baseline on deterministic hardware, never
promoted, and so calibrate nothing.)"""

from __future__ import annotations

from harness.experiment import parametric_null_tweaks
from harness.proposers import Proposal, Proposer

KINDS = ("structural", "parametric")


class AAProposer(Proposer):
    name = "aa"

    def __init__(self, replicas: int, baseline_values: dict, first_replica: int = 1):
        self.replicas = replicas                     # per kind, numbered from first_replica
        self.baseline_values = dict(baseline_values)
        self.queue = [(r, kind) for r in range(first_replica, first_replica + replicas) for kind in KINDS]

    def resume(self, proposed) -> None:
        """Drop the (replica, kind) nulls already proposed."""
        done = {(e.replica, e.null_kind) for e in proposed}
        self.queue = [q for q in self.queue if q not in done]

    def describe(self) -> str:
        return "aa" if self.replicas else "calibration"  # a calibration search: the baseline and its nulls only

    @property
    def exhausted(self) -> bool:
        return not self.queue

    def propose(self, n: int, remaining: int | None = None) -> list[Proposal]:
        out = []
        while len(out) < n and self.queue:
            r, kind = self.queue.pop(0)
            tweaks = parametric_null_tweaks(r, self.baseline_values) if kind == "parametric" else {}
            what = ("another initialisation, same data order" if kind == "structural"
                    else f"{next(iter(tweaks))} moved by a factor too small to matter, same seed")
            out.append(Proposal(tweaks=tweaks, proposer=self.name, replica=r,
                                rationale=f"A/A {kind} null {r}: the baseline recipe, {what}"))
        return out

    def observe(self, experiment_id: str, value: float | None) -> None:
        pass
