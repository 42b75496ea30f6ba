"""Proposers: where the next experiments come from.

Each proposer turns the search's state into `Proposal`s (tweaks + a rationale) and is told how they did:
- optuna (harness/proposers/optuna_tpe.py): TPE over the search space, its study stored in the same database;
  every proposal from anywhere is entered into the same study, so TPE learns from all of them.
- agent (harness/proposers/agent.py): Claude, through the Anthropic API, proposes from the search's own history;
  its proposals enter the Optuna study too.
- aa (harness/proposers/aa.py): null proposals identical to the baseline, to measure the ladder's
  false-promotion rate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.experiment import Experiment


@dataclass
class Proposal:
    tweaks: dict
    proposer: str
    rationale: str | None = None
    extra: dict = field(default_factory=dict)  # e.g. the falsification criterion, agent usage and cost
    patch: str | None = None
    replica: int = 0                           # A/A replica number (0 for real proposals)
    trial: int | None = None                   # the Optuna trial this proposal is


class Proposer:
    """What the search asks of a proposer. Optuna's BaseSampler is the model: two required methods, and hooks
    whose defaults fit a proposer that keeps no books of its own.

    Required:
    - `propose(n, remaining)`: the next n proposals (fewer, or none, when there is nothing left to propose).
      `remaining` is how many trials the search still wants in all (None: unknown): a proposer that asks for ideas
      in batches (the agent) sizes its batch by it.
    - `observe(experiment_id, value)`: how a proposed experiment did at the first rung: its mean paired difference
      from the control (lower is better), or None when its runs failed.
    Hooks:
    - `link(trial, experiment_id)`: the proposal of `trial` became this experiment (its id is the config's hash).
    - `resume(proposed)`: a resumed search's experiments, already proposed in an earlier session.
    - `enqueue(proposal)`: take an outside proposal (--enqueue) to hand out before its own; refused by default.
    - `exhausted`: nothing more will ever come (the search then stops proposing).
    - `describe()`: the proposer in the search's first line.
    - `steer(course)`: the course to keep from the next proposal on (harness/steering.py: leave a category after a
      plateau, pause one whose runs keep failing); ignored by default.
    - `distil(final)`: after every few decisions and at the end, distil the evidence into insights
      (harness/proposers/agent.py); nothing by default (it takes a language model).
    - `proposes_patches`: code patches may come from it (the "patch" category of change).
    """

    name = "proposer"
    proposes_patches = False

    def propose(self, n: int, remaining: int | None = None) -> list[Proposal]:
        raise NotImplementedError

    def observe(self, experiment_id: str, value: float | None) -> None:
        raise NotImplementedError

    def link(self, trial: int, experiment_id: str) -> None:
        pass

    def resume(self, proposed: Iterable[Experiment]) -> None:
        pass

    def enqueue(self, proposal: Proposal) -> None:
        raise ValueError(f"the {self.name} proposer takes no outside proposals (--enqueue)")

    @property
    def exhausted(self) -> bool:
        return False

    def describe(self) -> str:
        return self.name

    def steer(self, course) -> None:
        pass

    def distil(self, final: bool) -> None:
        pass
