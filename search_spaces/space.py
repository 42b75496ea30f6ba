"""
A named search space over the knobs, relative to a tier's baseline recipe: validation of proposals, Optuna
suggestions (and distributions, for enqueue_trial), and a JSON schema for the agent proposer.

A proposal's canonical form ("tweaks") lists only the knobs it moves away from the baseline, with values coerced
to the knob's type; it is what experiment ids hash, so the same change always gets the same id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from search_spaces.knobs import KNOBS, SPACES, Knob


class SearchSpaceError(ValueError):
    """A proposal outside the space: unknown knob, wrong type, out of range. One line, names knob and range."""


@dataclass
class Space:
    name: str
    knobs: tuple[Knob, ...]
    baseline: dict[str, object] = field(default_factory=dict)  # the tier's baseline values where they differ

    @classmethod
    def named(cls, name: str, baseline: dict[str, object] | None = None) -> Space:
        if name not in SPACES:
            raise SearchSpaceError(f"unknown search space {name!r}: expected one of {', '.join(SPACES)}")
        # A baseline may also set fields no knob turns (e.g. total_batch_size); only knob values matter here.
        return cls(name, tuple(KNOBS[k] for k in SPACES[name]), dict(baseline or {}))

    def __contains__(self, knob: str) -> bool:
        return any(k.name == knob for k in self.knobs)

    def baseline_value(self, knob: Knob):
        return self.baseline.get(knob.name, knob.default)

    # --- validation ------------------------------------------------------------------------------------------
    def validate(self, tweaks: dict) -> dict:
        """Check a proposal and return its canonical tweaks (sorted, coerced, baseline-valued knobs dropped)."""
        if not isinstance(tweaks, dict):
            raise SearchSpaceError(f"tweaks must be an object of knob: value, got {type(tweaks).__name__}")
        out = {}
        for name, value in tweaks.items():
            if name not in KNOBS:
                raise SearchSpaceError(f"unknown knob {name!r}: expected one of {', '.join(k.name for k in self.knobs)}")
            if name not in self:
                raise SearchSpaceError(f"knob {name!r} is not in the {self.name!r} space: expected one of "
                                       f"{', '.join(k.name for k in self.knobs)}")
            knob = KNOBS[name]
            value = coerce(knob, value)
            if not same(value, self.baseline_value(knob)):
                out[name] = value
        return dict(sorted(out.items()))

    # --- Optuna -----------------------------------------------------------------------------------------------
    # A trial is a *sparse* change: TPE picks how many knobs to turn (1 to 3), which ones, and their values, all
    # define-by-run, so it learns which knobs help and where. (Sampling every knob at once would make each
    # trial a random recipe that is almost never better than a tuned baseline.)
    MAX_TWEAKS = 3

    def suggest(self, trial) -> dict:
        """Ask an Optuna trial for a sparse change; return its canonical tweaks (possibly empty if it picked
        baseline values)."""
        count = trial.suggest_int("num_tweaks", 1, self.MAX_TWEAKS)
        names = [k.name for k in self.knobs]
        chosen = []
        for i in range(count):
            name = trial.suggest_categorical(f"knob_{i}", names)
            if name not in chosen:
                chosen.append(name)
        values = {}
        for name in chosen:
            k = KNOBS[name]
            if k.type == "bool":
                values[name] = trial.suggest_categorical(name, [False, True])
            elif k.type == "categorical":
                values[name] = trial.suggest_categorical(name, list(k.choices))
            elif k.type == "int":
                values[name] = trial.suggest_int(name, int(k.low), int(k.high))
            else:
                values[name] = trial.suggest_float(name, k.low, k.high, log=k.type == "logfloat")
        return self.validate(values)

    def params(self, tweaks: dict) -> dict:
        """The Optuna parameters that make `suggest` return exactly these tweaks (for `study.enqueue_trial`).
        A proposal turning more knobs than a trial can is entered with its first MAX_TWEAKS knobs (the Optuna
        proposer keeps the full tweaks with the trial, so the experiment itself is never truncated)."""
        tweaks = self.validate(tweaks)
        names = list(tweaks)[: self.MAX_TWEAKS] or [self.knobs[0].name]
        params = {"num_tweaks": len(names)}
        for i, name in enumerate(names):
            params[f"knob_{i}"] = name
            params[name] = tweaks.get(name, self.baseline_value(KNOBS[name]))
        return params

    # --- JSON schema (for the agent proposer) -----------------------------------------------------------------
    def json_schema(self) -> dict:
        props = {}
        for k in self.knobs:
            base = self.baseline_value(k)
            desc = f"{k.doc}. Baseline: {base!r}."
            if k.type == "bool":
                props[k.name] = {"type": "boolean", "description": desc}
            elif k.type == "categorical":
                props[k.name] = {"enum": list(k.choices), "description": desc}
            elif k.type == "int":
                props[k.name] = {"type": "integer", "minimum": int(k.low), "maximum": int(k.high), "description": desc}
            else:
                scale = " (log scale)" if k.type == "logfloat" else ""
                props[k.name] = {"type": "number", "minimum": k.low, "maximum": k.high, "description": desc + scale}
        return {"type": "object", "properties": props, "additionalProperties": False}


def coerce(knob: Knob, value):
    """The value in the knob's type, or a one-line SearchSpaceError naming the knob and what it accepts."""
    def bad(expected: str):
        return SearchSpaceError(f"knob {knob.name!r}={value!r}: expected {expected}")

    if knob.type == "bool":
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if knob.type == "categorical":
        for choice in knob.choices:
            if value is None and choice is None:
                return None
            if value is not None and choice is not None and not isinstance(value, bool) and value == choice:
                return choice
        raise bad(f"one of {list(knob.choices)}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(f"a number in [{knob.low:g}, {knob.high:g}]")
    if knob.type == "int":
        if value != int(value):
            raise bad(f"an integer in [{int(knob.low)}, {int(knob.high)}]")
        value = int(value)
    else:
        value = float(value)
    if not knob.low <= value <= knob.high:
        raise bad(f"a value in [{knob.low:g}, {knob.high:g}]")
    return value


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, int | float) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    return a == b and type(a) is type(b) or (a is None and b is None)
