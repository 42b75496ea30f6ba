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

from dataclasses import dataclass, field


@dataclass
class Proposal:
    tweaks: dict
    proposer: str
    rationale: str | None = None
    extra: dict = field(default_factory=dict)  # e.g. the falsification criterion, agent usage and cost
    patch: str | None = None
    replica: int = 0                           # A/A replica number (0 for real proposals)
    trial: int | None = None                   # the Optuna trial this proposal is
