"""
Replay: a recorded search re-decided under other decision rules, on the same runs, training nothing.

    python -m harness.replay NAME [NAME ...] [--db URL] [--rules ladder,greedy,halving,fixed_t] [--eta 3]
    python -m harness.replay cpu-aa          # an A/A run's controls, cpu-aa-1ofG ... cpu-aa-GofG, added up

Every run a search made is in the database, so how another rule would have judged the same candidates costs a
query. Each rule is a small policy over the final val_bpb of the runs at one rung, applied rung by rung to the
candidates it promoted from the rung below:

- ladder:  what the search decided (its recorded decisions): the paired, moderated, sequential test against the
           kind's control with the null spread as a floor (harness/ladder.py).
- greedy:  autoresearch's keep: one run per candidate (the first seed slot); promoted when its val_bpb is lower
           than the baseline's on that slot.
- halving: successive halving, ASHA's promotion rule: one run per candidate (the first slot); of the candidates
           judged at a rung, the best 1/eta (at least one) go up. No baseline, no noise model: something is always
           promoted.
- fixed_t: a one-sided paired t-test on the rung's first `seeds` slots at the tier's alpha, against the baseline
           alone: no minimum effect, no null floor, no moderation, no extra seeds.

A candidate a rule promotes to a rung where the search never ran it is *untried* there: the record holds no runs to
judge it by, and the replay says so instead of guessing (a rule that promotes more than the ladder runs out of
record above the first rung). Candidates the search knows to do nothing (A/A nulls, from `--aa`) are counted as
false promotions when a rule promotes them; the search's own null runs are noise measurements, not candidates.
A failed candidate run is a rejection under every rule.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from experiments.catalog import CatalogError, Rung, Statistics, Tier, load_tier
from harness.experiment import NOISE_FLOOR_REPLICA, Experiment
from harness.noise import paired_test
from harness.preparation import BadInput
from model.cli import ArgumentParser

RULES = ("ladder", "greedy", "halving", "fixed_t")
FIRST_SLOT = 0


@dataclass
class Recorded:
    """A search as the database holds it: its tier, its baseline and candidates, the final val_bpb of every run by
    (experiment, rung) and seed slot (None: the run failed), and the search's own final verdict per (experiment,
    rung)."""
    name: str
    tier: Tier
    baseline: str
    candidates: dict[str, dict]                                   # experiment id -> experiments row
    values: dict[tuple[str, str], dict[int, float | None]] = field(default_factory=dict)
    verdicts: dict[tuple[str, str], str] = field(default_factory=dict)
    # What each run cost, by (experiment, rung) and slot: its tokens at the rung's calibrated throughput, in seconds
    # (its own training time where the rung is uncalibrated); and each candidate's place in the order proposed.
    seconds: dict[tuple[str, str], dict[int, float | None]] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)

    def is_null(self, experiment_id: str) -> bool:
        """A/A null replicas do nothing by construction: promoting one is a false promotion."""
        return bool((self.candidates[experiment_id].get("extra") or {}).get("replica"))


@dataclass
class Outcome:
    """Where a rule left one candidate: adopted (promoted at the top rung), rejected at a rung, or untried at the
    rung it was promoted to, and how many of its runs the rule read on the way."""
    state: str                  # adopted | rejected | untried
    rung: str | None            # the rung it was rejected or untried at (the top rung when adopted)
    runs: int = 0
    promoted_at: list[str] = field(default_factory=list)
    read: dict[str, int] = field(default_factory=dict)  # rung name -> runs the rule read there

    def describe(self) -> str:
        return "adopted" if self.state == "adopted" else f"{self.state} at {self.rung}"


# -----------------------------------------------------------------------------------------------------------
# The rules: (candidates' slot values, the baseline's, the rung, the tier's statistics, eta, the recorded search's
# verdicts at this rung) -> experiment id -> (promote | reject, runs read).

Values = dict[int, float | None]


def first_slot(values: Values) -> float | None:
    return values.get(FIRST_SLOT)


def greedy(candidates: dict[str, Values], baseline: Values, rung: Rung, stats: Statistics, eta: int,
           recorded: dict[str, str]) -> dict[str, tuple[str, int]]:
    base = first_slot(baseline)
    out = {}
    for exp, values in candidates.items():
        mine = first_slot(values)
        better = mine is not None and base is not None and mine < base
        out[exp] = ("promote" if better else "reject", 1)
    return out


def halving(candidates: dict[str, Values], baseline: Values, rung: Rung, stats: Statistics, eta: int,
            recorded: dict[str, str]) -> dict[str, tuple[str, int]]:
    finished = sorted((first_slot(v), exp) for exp, v in candidates.items() if first_slot(v) is not None)
    keep = {exp for _, exp in finished[:max(1, len(finished) // eta)]} if finished else set()
    return {exp: ("promote" if exp in keep else "reject", 1) for exp in candidates}


def fixed_t(candidates: dict[str, Values], baseline: Values, rung: Rung, stats: Statistics, eta: int,
            recorded: dict[str, str]) -> dict[str, tuple[str, int]]:
    out = {}
    for exp, values in candidates.items():
        slots = [s for s in range(rung.seeds) if s in values]
        if any(values[s] is None for s in slots):
            out[exp] = ("reject", len(slots))
            continue
        deltas = [values[s] - baseline[s] for s in slots if baseline.get(s) is not None]
        p = paired_test(deltas, 0.0, stats.alpha).p_value if len(deltas) >= 2 else None
        out[exp] = ("promote" if p is not None and p < stats.alpha else "reject", len(slots))
    return out


def ladder(candidates: dict[str, Values], baseline: Values, rung: Rung, stats: Statistics, eta: int,
           recorded: dict[str, str]) -> dict[str, tuple[str, int]]:
    """The search's own verdicts; a candidate it never decided at this rung (the search was stopped while it waited
    for runs or more seeds) is left out."""
    return {exp: (recorded[exp], len(values)) for exp, values in candidates.items()
            if recorded.get(exp) in ("promote", "reject")}


RULE_FUNCTIONS: dict[str, Callable] = {"ladder": ladder, "greedy": greedy, "halving": halving, "fixed_t": fixed_t}


def replay(search: Recorded, rule: str, eta: int = 3) -> dict[str, Outcome]:
    """Every candidate's outcome under `rule`, rung by rung from the first."""
    decide = RULE_FUNCTIONS[rule]
    outcomes: dict[str, Outcome] = {}
    alive = list(search.candidates)
    for rung in search.tier.rungs:
        judged = {}
        for exp in alive:
            values = search.values.get((exp, rung.name))
            if values:
                judged[exp] = values
            else:
                outcome = outcomes.setdefault(exp, Outcome("untried", rung.name))
                outcome.state, outcome.rung = "untried", rung.name
        recorded = {exp: v for (exp, r), v in search.verdicts.items() if r == rung.name}
        verdicts = decide(judged, search.values.get((search.baseline, rung.name), {}), rung,
                          search.tier.statistics, eta, recorded)
        for exp in judged:
            if exp not in verdicts:  # undecided by the search itself: as far as the record goes
                outcome = outcomes.setdefault(exp, Outcome("untried", rung.name))
                outcome.state, outcome.rung = "untried", rung.name
        alive = []
        for exp, (verdict, runs) in verdicts.items():
            outcome = outcomes.setdefault(exp, Outcome("adopted", rung.name))
            outcome.runs += runs
            outcome.read[rung.name] = runs
            outcome.rung = rung.name
            if verdict == "promote":
                outcome.promoted_at.append(rung.name)
                alive.append(exp)
            else:
                outcome.state = "rejected"
    for exp in search.candidates:
        outcomes.setdefault(exp, Outcome("untried", search.tier.rungs[0].name))
    return outcomes


# -----------------------------------------------------------------------------------------------------------
# Reading a search from the database

def load(store, name: str) -> Recorded:
    """The recorded search `name` (BadInput when there is none, or its tier cannot be read)."""
    row = store.find_search(name)
    if row is None:
        known = [s["name"] for s in store.searches()][:8]
        raise BadInput(f"search {name!r}: not in {store.url_text} (expected one of: {', '.join(known) or 'none yet'})")
    config = row.get("config") or {}
    try:
        tier = load_tier(config.get("tier") or row.get("tier"))
        # The ladder as the search ran it: its rungs (--rungs; an A/A run's first rung only) and seed count (--seeds).
        rungs = [tier.rung(n) for n in config.get("rungs") or [r.name for r in tier.rungs]]
    except (CatalogError, KeyError, ValueError) as e:
        raise BadInput(f"search {name!r}: its tier and rungs cannot be read ({e})") from None
    if config.get("seeds"):
        rungs = [dataclasses.replace(r, seeds=int(config["seeds"])) for r in rungs]
    tier = dataclasses.replace(tier, rungs=tuple(rungs))
    seed_base = int(config.get("seed_base", 0))
    rows = {x["id"]: x for x in store.experiments(search_id=row["id"])}
    baseline = config.get("baseline_experiment_id") or next(
        (i for i, x in rows.items() if not x.get("tweaks") and not x.get("patch")
         and not (x.get("extra") or {}).get("replica")), None)
    candidates = {i: x for i, x in rows.items()
                  if i != baseline and (x.get("extra") or {}).get("replica") != NOISE_FLOOR_REPLICA}
    search = Recorded(name, tier, baseline, candidates, order={i: n for n, i in enumerate(rows)})
    rungs_by_name = {r.name: r for r in tier.rungs}
    # By experiment, not by the runs' search: a search reuses the finished runs an earlier one made of the same
    # experiment on the same seeds. Runs on other seed slots (another --seed-base) are not this search's.
    for run in store.runs(experiment_id=list(rows)):
        x = rows[run["experiment_id"]]
        if run["status"] in ("running", "queued"):
            continue
        extra = x.get("extra") or {}
        slot = Experiment(tweaks=x.get("tweaks") or {}, tier=tier.name, patch=x.get("patch"),
                          replica=int(extra.get("replica") or 0)).slot(int(run["seed"]), seed_base)
        if not 0 <= slot < max(tier.statistics.max_seeds, int(config.get("seeds") or 0)):
            continue
        ok = run["status"] == "ok" and run.get("val_bpb") is not None and math.isfinite(run["val_bpb"])
        search.values.setdefault((run["experiment_id"], run["rung"]), {})[slot] = run["val_bpb"] if ok else None
        rung = rungs_by_name.get(run["rung"])
        calibrated = rung is not None and rung.tok_per_s and run.get("tokens")
        search.seconds.setdefault((run["experiment_id"], run["rung"]), {})[slot] = (
            run["tokens"] / rung.tok_per_s if calibrated else run.get("total_training_time"))
    for d in store.decisions(search_id=row["id"]):
        search.verdicts[(d["experiment_id"], d["from_rung"])] = d["verdict"]  # the last decision of each stands
    return search


def expand(store, names: list[str]) -> list[str]:
    """Each name, or where no search has it, the controls an A/A run split it into (NAME-1ofG ... NAME-GofG)."""
    known = [s["name"] for s in store.searches()]
    out = []
    for name in names:
        control = re.compile(re.escape(name) + r"-(\d+)of\d+")
        controls = {int(m.group(1)): n for n in known if (m := control.fullmatch(n))}
        out.extend([name] if name in known or not controls else [controls[i] for i in sorted(controls)])
    return out


# -----------------------------------------------------------------------------------------------------------
# The report

@dataclass
class Tally:
    candidates: int = 0
    nulls: int = 0
    adopted: int = 0
    false_adopted: int = 0
    promoted_first: int = 0
    false_first: int = 0
    untried: int = 0
    runs: int = 0

    def add(self, search: Recorded, outcomes: dict[str, Outcome]) -> None:
        first = search.tier.rungs[0].name
        for exp, o in outcomes.items():
            null = search.is_null(exp)
            self.candidates += 1
            self.nulls += null
            self.adopted += o.state == "adopted"
            self.false_adopted += null and o.state == "adopted"
            self.promoted_first += first in o.promoted_at
            self.false_first += null and first in o.promoted_at
            self.untried += o.state == "untried"
            self.runs += o.runs


def report(searches: list[Recorded], rules: list[str], eta: int, out=None) -> dict[str, Tally]:
    """Print each search's candidates under each rule, then the tallies over all of them; return the tallies."""
    out = out or sys.stdout
    tallies = {rule: Tally() for rule in rules}
    for search in searches:
        outcomes = {rule: replay(search, rule, eta) for rule in rules}
        for rule in rules:
            tallies[rule].add(search, outcomes[rule])
        rungs = " -> ".join(r.name for r in search.tier.rungs)
        print(f"search {search.name!r}: tier {search.tier.name}, rungs {rungs}, {len(search.candidates)} candidates "
              f"({sum(map(search.is_null, search.candidates))} A/A nulls)", file=out)
        width = max([len("candidate")] + [len(c["name"][:48]) for c in search.candidates.values()])
        print(f"  {'candidate':<{width}}  {'truth':<7}" + "".join(f"  {r:<16}" for r in rules), file=out)
        for exp, row in search.candidates.items():
            truth = "null" if search.is_null(exp) else "?"
            print(f"  {row['name'][:48]:<{width}}  {truth:<7}"
                  + "".join(f"  {outcomes[r][exp].describe():<16}" for r in rules), file=out)
    first = searches[0].tier.rungs[0].name if searches else "the first rung"
    print(f"\n{'rule':<8}  {'adopted':>7}  {'nulls adopted':>13}  {f'promoted at {first}':>16}  "
          f"{f'nulls at {first}':>13}  {'untried':>7}  {'candidate runs':>14}", file=out)
    for rule, t in tallies.items():
        nulls = f"{t.false_adopted}/{t.nulls}" if t.nulls else "-"
        nulls_first = f"{t.false_first}/{t.nulls}" if t.nulls else "-"
        print(f"{rule:<8}  {t.adopted:>7}  {nulls:>13}  {t.promoted_first:>16}  {nulls_first:>13}  {t.untried:>7}  "
              f"{t.runs:>14}", file=out)
    print("(untried: promoted to a rung the search never ran it at, so the record cannot judge it there; candidate "
          "runs: the runs each rule read)", file=out)
    return tallies


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m harness.replay",
                       description="Re-decide recorded searches under other decision rules, on the same runs.")
    p.add_argument("names", nargs="+", metavar="NAME", help="searches to replay (their --name); several add up")
    p.add_argument("--db", default=None, help="database URL (env NANORESEARCH_DB; default sqlite:///nanoresearch.db)")
    p.add_argument("--rules", default=",".join(RULES), help=f"comma-separated, of {', '.join(RULES)}")
    p.add_argument("--eta", type=int, default=3, help="halving keeps the best 1/eta at each rung (default 3)")
    return p


def main(argv: list[str] | None = None) -> int:
    from leaderboard import LeaderboardError, Store
    args = build_parser().parse_args(argv)
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    try:
        unknown = [r for r in rules if r not in RULES]
        if unknown or not rules:
            raise BadInput(f"--rules {args.rules!r}: expected a comma-separated list of {', '.join(RULES)}")
        if args.eta < 2:
            raise BadInput(f"--eta {args.eta}: expected an integer >= 2")
        try:
            with Store(args.db, read_only=True) as store:
                if store.schema_version == 0:
                    raise BadInput(f"{store.url_text} holds no leaderboard yet (run a search first)")
                searches = [load(store, name) for name in expand(store, args.names)]
        except LeaderboardError as e:
            raise BadInput(str(e)) from None
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(searches, rules, args.eta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
