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
- agent:    Claude through the Anthropic API (ANTHROPIC_API_KEY): each proposal is one call that shows the baseline,
            the changes tried so far with their values, and the untried ones (names and settings only: never what they
            were planted as), and asks for one by forced tool use. An unusable answer or a failed call falls back to
            the scripted choice for that proposal. Its tokens and dollars are counted (`spend`).
- list:     the pool in its file's order (the benchmark's truth runs).
"""

from __future__ import annotations

import json
import math
import random

import optuna

from harness.proposers import Proposal, Proposer

STRATEGIES = ("tpe", "random", "scripted", "agent", "list")
AGENT_TOOL = "choose_change"
STARTUP_TRIALS = 3  # TPE's random start-up (Optuna's default 10 would cover most of a small pool)


class PoolProposer(Proposer):
    def __init__(self, changes: list[tuple[str, dict]], strategy: str, seed: int = 0):
        """`changes`: (name, tweaks) of every change in the pool, tweaks in canonical form."""
        if strategy not in STRATEGIES or (strategy == "agent") != isinstance(self, PoolAgent):
            raise ValueError(f"pool strategy {strategy!r}: expected one of {', '.join(STRATEGIES)} (agent: PoolAgent)")
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


class PoolAgent(PoolProposer):
    """The `agent` strategy: Claude picks the next change of the pool (see the module docstring)."""

    def __init__(self, changes: list[tuple[str, dict]], baseline: dict, seed: int = 0, model: str | None = None,
                 client=None, max_tokens: int = 4000, say=None):
        super().__init__(changes, "agent", seed)
        from harness.proposers.agent import DEFAULT_MODEL, accepts_forced_tool
        self.model = model or DEFAULT_MODEL
        self.baseline, self.max_tokens = dict(baseline), max_tokens
        if client is None:
            import anthropic  # the key and ANTHROPIC_BASE_URL come from the environment, read by the SDK
            client = anthropic.Anthropic(max_retries=2, timeout=600.0)
        self.client = client
        self.forced = accepts_forced_tool(self.model)
        self.say = say or (lambda message: print(message, flush=True))
        self.spend = {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "fallbacks": 0}

    def describe(self) -> str:
        return f"pool/agent ({self.model}, {len(self.changes)} changes)"

    def choose(self) -> tuple[str, str]:
        untried = self.untried
        try:
            name, why = self.ask(untried)
            if name in untried:
                return name, why
            problem = f"it chose {name!r}, not an untried change"
        except Exception as e:  # noqa: BLE001 - the benchmark never stops because of the agent
            problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        self.spend["fallbacks"] += 1
        self.say(f"agent: unusable ({problem}); the scripted choice stands in for this proposal")
        name, why = self.scripted()
        return name, f"(scripted fallback) {why}"

    def prompt(self, untried: list[str]) -> tuple[str, str]:
        system = ("You choose the next experiment of a search for changes that lower the validation bits-per-byte "
                  "(val_bpb) of a small GPT trained for a fixed compute budget. Each change is tested on a few seeds "
                  "against the baseline, paired by seed; its value is the mean paired difference in val_bpb "
                  "(negative is better). Each change can be tested once. Choose the untried change most likely to "
                  "improve on the best so far.")
        lines = [f"Baseline settings that differ from nanochat's defaults: {json.dumps(self.baseline, sort_keys=True)}",
                 "", "Tried so far (in order):"]
        for n in self.proposed:
            v = self.values.get(n, "pending")
            value = "pending" if v == "pending" else "its runs failed" if v is None else f"{v:+.4f}"
            lines.append(f"- {n}: {json.dumps(self.changes[n], sort_keys=True)} -> {value}")
        if not self.proposed:
            lines.append("- nothing yet")
        lines += ["", "Untried changes:"] + [f"- {n}: {json.dumps(self.changes[n], sort_keys=True)}" for n in untried]
        lines += ["", f"Call {AGENT_TOOL} with one untried change and why."]
        return system, "\n".join(lines)

    def ask(self, untried: list[str]) -> tuple[str, str]:
        from harness.proposers.prices import cost_usd
        system, user = self.prompt(untried)
        tool = {"name": AGENT_TOOL, "description": "The next change to test.",
                "input_schema": {"type": "object", "properties": {
                    "change": {"enum": untried, "description": "the name of an untried change"},
                    "rationale": {"type": "string", "description": "why this one, citing the history"}},
                    "required": ["change", "rationale"], "additionalProperties": False}}
        choice = ({"type": "tool", "name": AGENT_TOOL, "disable_parallel_tool_use": True} if self.forced
                  else {"type": "auto", "disable_parallel_tool_use": True})
        self.spend["calls"] += 1
        response = self.client.messages.create(model=self.model, max_tokens=self.max_tokens, system=system,
                                               messages=[{"role": "user", "content": user}], tools=[tool],
                                               tool_choice=choice)
        usage = getattr(response, "usage", None)
        tokens_in = int(getattr(usage, "input_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "output_tokens", 0) or 0)
        self.spend["input_tokens"] += tokens_in
        self.spend["output_tokens"] += tokens_out
        cost = cost_usd(self.model, tokens_in, tokens_out)
        if cost is None:
            self.spend["cost_usd"] = None
        elif self.spend["cost_usd"] is not None:
            self.spend["cost_usd"] += cost
        for block in getattr(response, "content", None) or []:
            if getattr(block, "type", None) == "tool_use" and getattr(block, "name", None) == AGENT_TOOL:
                data = block.input if isinstance(block.input, dict) else {}
                return str(data.get("change")), f"agent: {str(data.get('rationale') or '')[:500]}"
        raise ValueError("no choose_change call in the answer")
