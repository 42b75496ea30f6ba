"""
Steering a search that stalls or keeps failing: the course the proposer is told to keep before each proposal.

Two signals, both read from the search's own records (so a resumed search steers as the stopped one did):

- A plateau: the last N decisions (--plateau N; "one more seed" does not count) promoted nothing. The category the
  stalled decisions mostly turned (architecture, optimizer, schedule, patch; search_spaces/knobs.py) is the one to
  leave: the agent is told so and its proposals that stay inside it are refused; the Optuna proposer samples
  uniformly at random (more exploration) until a promotion ends the plateau. A space with no other category can only
  be widened, which the search says.
- A failure burst: in the last M finished runs of a category's experiments (--failure-window M), more than a share
  (--failure-share) failed. That category is paused: the agent is told and its proposals touching it are refused;
  the Optuna proposer's draws that turn one of its knobs are pruned. A paused category gets no new runs, so
  it stays paused for the search; when every category is paused, the search stops proposing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from search_spaces import CATEGORIES, Space


@dataclass(frozen=True)
class SteeringConfig:
    plateau: int = 6             # decisions without a promotion that make a plateau (0: never)
    failure_window: int = 6      # the last M finished runs of a category that are looked at
    failure_share: float = 0.5   # pause a category when more than this share of its last M runs failed (1: never)


@dataclass(frozen=True)
class Course:
    available: tuple[str, ...]              # the categories proposals may come from in this search
    stalled_for: int = 0                    # decisions in a row without a promotion, once they make a plateau
    leave: str | None = None                # the category the plateau circled in
    paused: dict[str, str] = field(default_factory=dict)  # category -> why it is paused

    @property
    def open(self) -> tuple[str, ...]:
        """The categories still open to proposals."""
        return tuple(c for c in self.available if c not in self.paused)

    def refusal(self, categories: frozenset[str]) -> str | None:
        """Why a proposal touching `categories` must not be tested now, or None."""
        for c in sorted(categories & set(self.paused)):
            return f"the {c} category is paused ({self.paused[c]})"
        if self.stalled_for and self.leave and categories and categories <= {self.leave}:
            return (f"a plateau of {self.stalled_for} decisions without a promotion, mostly {self.leave} changes: "
                    f"propose from another category ({', '.join(c for c in self.open if c != self.leave)})")
        return None

    def lines(self) -> list[str]:
        """The course in words (the terminal's lines, the agent's instructions)."""
        out = []
        if self.stalled_for:
            others = [c for c in self.open if c != self.leave]
            if self.leave and others:
                out.append(f"plateau: {self.stalled_for} decisions in a row without a promotion, mostly {self.leave} "
                           f"changes: the next proposals must come from another category ({', '.join(others)})")
            else:
                out.append(f"plateau: {self.stalled_for} decisions in a row without a promotion and no other category "
                           "in this space: widen it (--space all, or --allow-patches with the agent)")
        for c, why in sorted(self.paused.items()):
            out.append(f"paused: {c} proposals ({why}); the search goes on with the others")
        return out


def course(config: SteeringConfig, decisions: list[dict], experiments: dict[str, frozenset[str]],
           runs: list[dict], available: tuple[str, ...], failed: tuple[str, ...]) -> Course:
    """The course from the search's decisions (oldest first), its candidates' categories (experiment id -> categories;
    nulls and the baseline left out), their finished runs (in the order they finished) and which run statuses are
    failures."""
    final = [d for d in decisions if d["experiment_id"] in experiments and d["verdict"] != "more_seeds"]
    stalled = 0
    for d in reversed(final):
        if d["verdict"] == "promote":
            break
        stalled += 1
    stalled_for, leave = 0, None
    if config.plateau and stalled >= config.plateau:
        stalled_for = stalled
        counts: Counter[str] = Counter()
        last_seen: dict[str, int] = {}
        for i, d in enumerate(final[-config.plateau:]):
            for c in experiments[d["experiment_id"]]:
                counts[c] += 1
                last_seen[c] = i
        if counts:
            leave = max(counts, key=lambda c: (counts[c], last_seen[c]))
            if not [c for c in available if c != leave]:
                leave = None
    paused = {}  # (a share of 1 never pauses: no more than all runs can fail)
    for c in available:
        mine = [r for r in runs if c in experiments.get(r["experiment_id"], ())][-config.failure_window:]
        bad = sum(r["status"] in failed for r in mine)
        if len(mine) >= config.failure_window and bad / len(mine) > config.failure_share:
            paused[c] = f"{bad} of its last {len(mine)} runs failed"
    return Course(available=available, stalled_for=stalled_for, leave=leave, paused=paused)


def available_categories(space: Space, patches: bool) -> tuple[str, ...]:
    """The categories a search's proposals can come from: its space's knobs', and patch when patches are allowed."""
    have = {k.category for k in space.knobs} | ({"patch"} if patches else set())
    return tuple(c for c in CATEGORIES if c in have)
