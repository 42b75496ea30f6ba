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
  the Optuna proposer's draws that turn one of its knobs are pruned. A pause is a circuit breaker, not a verdict
  on the category: after P more decisions on other kinds of change (--pause-for P; 0: for the rest of the search)
  it opens again on probation, its failure window started afresh (the runs that paused it, and those that finished
  during the pause, no longer count), so only a new burst pauses it again; the agent is told it is on probation
  until its next M runs are in. While every category is paused the search proposes nothing; with nothing running
  to decide (so nothing to lift a pause) it stops proposing.
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
    pause_for: int = 6           # decisions after which a paused category opens again, on probation (0: never)


@dataclass(frozen=True)
class Course:
    available: tuple[str, ...]              # the categories proposals may come from in this search
    stalled_for: int = 0                    # decisions in a row without a promotion, once they make a plateau
    leave: str | None = None                # the category the plateau circled in
    paused: dict[str, str] = field(default_factory=dict)  # category -> why it is paused
    probation: dict[str, str] = field(default_factory=dict)  # category -> why: open again after a pause
    pause_for: int = 0                      # decisions a pause lasts (0: the rest of the search)

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

    def plateau_line(self) -> str | None:
        if not self.stalled_for:
            return None
        others = [c for c in self.open if c != self.leave]
        if self.leave and others:
            return (f"plateau: {self.stalled_for} decisions in a row without a promotion, mostly {self.leave} "
                    f"changes: the next proposals must come from another category ({', '.join(others)})")
        return (f"plateau: {self.stalled_for} decisions in a row without a promotion and no other category "
                "in this space: widen it (--space all, or --allow-patches with the agent)")

    def same_plateau(self, other: Course) -> bool:
        """Both in a plateau that leaves the same category, whatever its length."""
        return bool(self.stalled_for and other.stalled_for) and self.leave == other.leave and self.open == other.open

    def lines(self) -> list[str]:
        """The course in words (the terminal's lines, the agent's instructions)."""
        out = [line] if (line := self.plateau_line()) else []
        for c, why in sorted(self.paused.items()):
            out.append(f"paused: {c} proposals ({why}); the search goes on with the others"
                       + (f" and opens {c} again after {n_decisions(self.pause_for)} on them" if self.pause_for else ""))
        for c, why in sorted(self.probation.items()):
            out.append(f"probation: {c} proposals are open again ({why}); a new burst of failed runs pauses them "
                       "again: prefer the cautious end of its knobs")
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
    paused, probation = {}, {}
    for c in available:
        # A pause lasts for decisions on the other categories' changes: those on the paused kind's own failures
        # (made just after its burst) say nothing new.
        others = [d.get("created_at") for d in final if c not in experiments[d["experiment_id"]]]
        why, reopened = pause_state(config, [r for r in runs if c in experiments.get(r["experiment_id"], ())],
                                    others, failed)
        if why:
            paused[c] = why
        elif reopened:
            probation[c] = reopened
    return Course(available=available, stalled_for=stalled_for, leave=leave, paused=paused, probation=probation,
                  pause_for=config.pause_for)


def pause_state(config: SteeringConfig, runs: list[dict], decided_at: list, failed: tuple[str, ...]
                ) -> tuple[str | None, str | None]:
    """One category's pause from its finished runs (in finish order) and when the decisions on other kinds of change
    were made: (why it is paused, or None; why it is on probation, or None). The runs are replayed in order: a burst
    pauses the category when its run finished; the pause lifts once `pause_for` decisions were made after that, and
    the failure window then starts with the next run. Probation lasts until a full window of runs is in without a
    burst. A pause that began at an unknown time (a run without finished_at) never lifts."""
    window, share = config.failure_window, config.failure_share

    def lifted(since, until=None) -> bool:
        return bool(config.pause_for) and since is not None and sum(
            1 for t in decided_at if t is not None and t > since and (until is None or t < until)) >= config.pause_for

    start, paused_at, why, reopened = 0, None, None, None
    for i, run in enumerate(runs):
        if why is not None:
            if not lifted(paused_at, run.get("finished_at") or None):
                continue  # finished during the pause (it was queued before): it neither extends nor ends it
            start, why, reopened = i, None, f"paused after {why}, then {n_decisions(config.pause_for)} on others"
        last = runs[start:i + 1][-window:]
        bad = sum(r["status"] in failed for r in last)
        if len(last) >= window and bad / len(last) > share:  # (a share of 1 never pauses: no more than all can fail)
            paused_at, why, reopened = run.get("finished_at"), f"{bad} of its last {len(last)} runs failed", None
    if why is not None and lifted(paused_at):
        start, why, reopened = len(runs), None, f"paused after {why}, then {n_decisions(config.pause_for)} on others"
    if reopened and len(runs) - start >= window:
        reopened = None  # a full window since the pause lifted, and no new burst: off probation
    return why, reopened


def n_decisions(n: int) -> str:
    return f"{n} decision" + ("" if n == 1 else "s")


def available_categories(space: Space, patches: bool) -> tuple[str, ...]:
    """The categories a search's proposals can come from: its space's knobs', and patch when patches are allowed."""
    have = {k.category for k in space.knobs} | ({"patch"} if patches else set())
    return tuple(c for c in CATEGORIES if c in have)
