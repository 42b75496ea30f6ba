"""A/A calibration: null proposals that are the baseline itself.

Replica r is the baseline recipe with no tweaks, run on its own seeds (see Experiment.seed_offset), so it is no
better than the baseline by construction. The fraction of replicas the ladder promotes is its false-promotion
rate: the number to compare with the stated alpha."""

from __future__ import annotations

from harness.proposers import Proposal


class AAProposer:
    name = "aa"

    def __init__(self, replicas: int):
        self.replicas = replicas
        self.next_replica = 1

    def skip_to(self, replica: int) -> None:
        """On resume: continue after the replicas already proposed."""
        self.next_replica = max(self.next_replica, replica + 1)

    def propose(self, n: int) -> list[Proposal]:
        out = []
        while len(out) < n and self.next_replica <= self.replicas:
            r = self.next_replica
            out.append(Proposal(tweaks={}, proposer=self.name, replica=r,
                                rationale=f"A/A null proposal {r}: the baseline recipe on independent seeds"))
            self.next_replica += 1
        return out

    def observe(self, experiment_id: str, value: float | None) -> None:
        pass
