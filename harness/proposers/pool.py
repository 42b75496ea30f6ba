"""Proposers over a fixed pool of changes (the search benchmark's, harness/benchmark.py): which change to test next.

A benchmark knows the truth of every change in its pool, so its proposers choose among those changes instead of
sampling the whole space (a sampled value's true effect would be unknown). Each change is proposed at most once.

- tpe:      Optuna's TPE over two categorical parameters, define-by-run as the search's own space: which knob(s) the
            change turns, then which of the pool's values for them; told each change's mean paired difference at the
            first rung. Its random start-up is shortened to 3 proposals (Optuna's default is 10): a pool of ~10
            changes would otherwise be over before TPE's model is used.
- random:   Optuna's RandomSampler over the same parameters: TPE's control.
- scripted: a stand-in for the agent that needs no API key and behaves like a plausible LLM researcher: it starts
            with a change on a knob it has not tried, and once something has helped it tries the untried change
            nearest to the best so far on the same knob (the history's rationale: "the matrix LR mattered, try next to
            it"); when nothing has helped, it moves to a knob it has not tried yet. Its choices among equals are
            seeded.
- list:     the pool in its file's order (the benchmark's truth runs).
"""

from __future__ import annotations

import math
import random

import optuna

from harness.proposers import Proposal, Proposer

STRATEGIES = ("tpe", "random", "scripted", "list")
STARTUP_TRIALS = 3  # TPE's random start-up (Optuna's default 10 would cover most of a small pool)


class PoolProposer(Proposer):
    def __init__(self, changes: list[tuple[str, dict]], strategy: str, seed: int = 0):
        """`changes`: (name, tweaks) of every change in the pool, tweaks in canonical form."""
        if strategy not in STRATEGIES:
            raise ValueError(f"pool strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
        self.changes = dict(changes)
        self.strategy, self.name = strategy, strategy
        self.rng = random.Random(seed)
        self.proposed: list[str] = []                 # change names, in the order proposed
        self.values: dict[str, float | None] = {}     # change name -> its value at the first rung (None: failed)
        self.by_experiment: dict[str, str] = {}       # experiment id -> change name
        self.trials: dict[str, optuna.trial.Trial] = {}
        self.study = None
        if strategy in ("tpe", "random"):
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS) if strategy == "tpe"
                       else optuna.samplers.RandomSampler(seed=seed))
            self.study = optuna.create_study(direction="minimize", sampler=sampler)

    @property
    def untried(self) -> list[str]:
        return [n for n in self.changes if n not in self.proposed]

    @property
    def exhausted(self) -> bool:
        return not self.untried

    def describe(self) -> str:
        return f"pool/{self.strategy} ({len(self.changes)} changes)"

    # --- the seam ---------------------------------------------------------------------------------------------
    def propose(self, n: int, remaining: int | None = None) -> list[Proposal]:
        out = []
        for _ in range(n):
            if not self.untried:
                break
            name, why = self.choose()
            self.proposed.append(name)
            out.append(Proposal(tweaks=dict(self.changes[name]), proposer=self.name, rationale=why,
                                extra={"pool_change": name}, trial=len(self.proposed) - 1))
        return out

    def link(self, trial: int, experiment_id: str) -> None:
        """The proposal numbered `trial` (its place in `proposed`) became this experiment."""
        self.by_experiment[experiment_id] = self.proposed[trial]

    def resume(self, proposed) -> None:
        """A resumed search's experiments: their changes are not proposed again (their values arrive by `observe`)."""
        for exp in proposed:
            name = (exp.extra or {}).get("pool_change")
            if name in self.changes and name not in self.proposed:
                self.proposed.append(name)
                self.by_experiment[exp.id] = name

    def observe(self, experiment_id: str, value: float | None) -> None:
        name = self.by_experiment.get(experiment_id)
        if name is None or name in self.values:
            return
        self.values[name] = value
        trial = self.trials.pop(name, None)
        if trial is not None:
            if value is None or not math.isfinite(value):
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(trial, value)

    # --- the strategies ---------------------------------------------------------------------------------------
    def choose(self) -> tuple[str, str]:
        if self.strategy == "list":
            return self.untried[0], "the pool in order"
        if self.strategy == "scripted":
            return self.scripted()
        return self.sampled()

    def sampled(self) -> tuple[str, str]:
        """Ask the study for a change; a change already proposed is told its known value (or pruned while it is
        still running) and the study is asked again, as Optuna does with repeated suggestions."""
        knobs = sorted({knobs_of(t) for t in self.changes.values()})
        for _ in range(200):
            trial = self.study.ask()
            knob = trial.suggest_categorical("knob", knobs)
            values = [n for n, t in self.changes.items() if knobs_of(t) == knob]
            name = trial.suggest_categorical(f"change of {knob}", values) if len(values) > 1 else values[0]
            if name not in self.proposed:
                self.trials[name] = trial
                return name, f"{self.strategy} sampled it (trial {trial.number})"
            value = self.values.get(name)
            if value is not None and math.isfinite(value):
                self.study.tell(trial, value)
            else:
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        name = self.rng.choice(self.untried)  # the sampler keeps repeating itself: take an untried one at random
        return name, f"{self.strategy} kept repeating itself: a random untried change"

    def scripted(self) -> tuple[str, str]:
        untried = self.untried
        helped = {n: v for n, v in self.values.items() if v is not None and v < 0}
        if helped:
            best = min(helped, key=helped.get)
            near = [n for n in untried if set(self.changes[n]) == set(self.changes[best])]
            if near:
                name = min(near, key=lambda n: (distance(self.changes[n], self.changes[best]), self.rng.random()))
                return name, f"next to the best so far ({best}, d {helped[best]:+.4f})"
        tried_knobs = {k for n in self.proposed for k in self.changes[n]}
        fresh = [n for n in untried if not set(self.changes[n]) & tried_knobs]
        name = self.rng.choice(fresh or untried)
        return name, "a knob not tried yet" if fresh else "every knob tried: another value"


def knobs_of(tweaks: dict) -> str:
    return ",".join(sorted(tweaks))


def distance(a: dict, b: dict) -> float:
    """How far two changes on the same knobs are: summed |log ratio| of numeric values, 1 per other difference."""
    total = 0.0
    for k in a:
        x, y = a[k], b.get(k)
        if isinstance(x, int | float) and isinstance(y, int | float) and not isinstance(x, bool) and x > 0 and y > 0:
            total += abs(math.log(x / y))
        else:
            total += float(x != y)
    return total
