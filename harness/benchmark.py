"""
`python -m harness.benchmark`: the search itself, measured. What does it find per unit of compute, and how often is
it fooled?

    python -m harness.benchmark                              # the cpu benchmark: TPE, random and the scripted agent
    python -m harness.benchmark --proposers tpe,random --repeats 5 --trials 10 --out bench-out
    python -m harness.benchmark --report-only                # the report again from the database, training nothing

A benchmark (experiments/benchmarks/*.toml) is a tier, a baseline recipe with planted defects, and a pool of
changes: good ones (repairing a planted defect), bad ones, and nulls (a setting moved by 0.1%: nothing meaningful).
It runs in three steps, each a search recorded in the database like any other (rerunning resumes it):

1. Truth. Every change that is not a null by construction runs on `--truth-seeds` seeds of its own at the first
   rung (seed slots from `--truth-seed-base`, disjoint from the searches'), paired with the baseline there. Its
   true effect is that mean paired difference; a change is *good* when it is more than max(min effect, 2 standard
   errors) below zero, *bad* when as far above, and a null otherwise (nulls by construction are not run).
2. Searches. For each proposer (`tpe`, `random`, `scripted`: harness/proposers/pool.py) and each repeat (the
   proposer's seed), a search over the pool with `--trials` proposals on the tier's full ladder. The searches share
   seed slots, so a change's runs are made once and taken by every later search (harness.search reuses runs another
   search made the same way): repeats and proposers cost only the runs no search has made yet.
3. Decisions. Each search is re-decided under every rule (harness/replay.py: the ladder as recorded, autoresearch's
   greedy keep, successive halving, a fixed-n paired t-test) on its own runs, and scored against the truth.

Reported per proposer and rule, over the repeats: true promotions (good changes adopted at the top rung), false
promotions (nulls and bad changes adopted; and, for rules that promote more than the ladder ran, promoted at the
first rung), missed wins (good changes proposed but rejected), the compute to the first true win, the final
top-rung improvement (the adopted change with the lowest mean paired difference at the top rung), and the discovery
curve (the best true effect among adopted changes against compute). Compute is counted in the tier's calibrated
hours (a run's tokens over its rung's calibrated tok/s; a run's own training time where the rung is uncalibrated),
charged in the order the changes were proposed: a change costs the runs the rule read of it, and a rung's controls
are charged when the rule first judges a change there (the ladder: the baseline and its two nulls on the baseline's
slots; greedy: one baseline run; fixed-t: the rung's seeds of the baseline; halving: none).

Out: a table on stdout, `--out DIR` (default $NANORESEARCH_HOME/benchmarks/NAME) gets benchmark.json, discovery.png
and outcomes.png; the dashboard's Benchmark page reads benchmark.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from experiments.catalog import Benchmark, CatalogError, load_benchmark, load_recipe
from harness import replay, search_report
from harness.preparation import BadInput
from harness.proposers.pool import PoolAgent, PoolProposer
from harness.search_config import SearchError, resolve
from harness.search_config import build_parser as search_parser
from model.cli import ArgumentParser
from search_spaces import SearchSpaceError, Space

PROPOSERS = ("tpe", "random", "scripted", "agent")
DEFAULT_PROPOSERS = ("tpe", "random", "scripted")  # agent: only with ANTHROPIC_API_KEY
REPORT_FILE = "benchmark.json"


# -----------------------------------------------------------------------------------------------------------
# The truth

@dataclass
class Truth:
    """A change's true effect at the first rung, from the benchmark's own runs (None for a null by construction)."""
    name: str
    planted: str
    tweaks: dict
    effect: float | None = None
    std_error: float | None = None
    n: int = 0
    label: str = "null"              # good | bad | null: what the measurement says it is


def label(effect: float, std_error: float, min_effect: float) -> str:
    bar = max(min_effect, 2 * std_error)
    return "good" if effect < -bar else "bad" if effect > bar else "null"


def measure_truth(recorded: replay.Recorded, changes: list[Truth], min_effect: float) -> None:
    """Fill each change's effect from the truth search's runs: mean and standard error of its paired differences with
    the baseline at the first rung."""
    rung = recorded.tier.rungs[0].name
    base = recorded.values.get((recorded.baseline, rung), {})
    by_tweaks = {key(row.get("tweaks") or {}): exp for exp, row in recorded.candidates.items()}
    for t in changes:
        exp = by_tweaks.get(key(t.tweaks))
        mine = recorded.values.get((exp, rung), {}) if exp else {}
        deltas = [v - base[s] for s, v in mine.items() if v is not None and base.get(s) is not None]
        if not deltas:
            continue
        t.n, t.effect = len(deltas), statistics.fmean(deltas)
        t.std_error = statistics.stdev(deltas) / math.sqrt(len(deltas)) if len(deltas) > 1 else math.inf
        t.label = label(t.effect, t.std_error, min_effect)


def key(tweaks: dict) -> str:
    return json.dumps(tweaks, sort_keys=True)


# -----------------------------------------------------------------------------------------------------------
# Scoring one search under one rule

@dataclass
class Score:
    search: str
    proposer: str
    repeat: int
    rule: str
    proposed: list[str] = field(default_factory=list)       # change names, in the order proposed
    outcomes: dict[str, str] = field(default_factory=dict)   # change name -> adopted | rejected at X | untried at X
    true_promotions: int = 0
    false_promotions: int = 0           # nulls and bad changes adopted at the top rung
    nulls_adopted: int = 0
    bad_adopted: int = 0
    false_first: int = 0                # not-good changes promoted at the first rung
    nulls_proposed: int = 0
    missed: int = 0                     # good changes proposed and rejected
    untried: int = 0
    compute_h: float = 0.0
    first_win_h: float | None = None
    top_improvement: float | None = None    # the best adopted change's mean paired difference at the top rung
    top_change: str | None = None
    curve: list[tuple[float, float]] = field(default_factory=list)  # (compute h, best true effect adopted so far)


def run_hours(recorded: replay.Recorded, exp: str, rung) -> float:
    """The mean cost of one run of `exp` at `rung`, in calibrated hours."""
    costs = [c for c in recorded.seconds.get((exp, rung.name), {}).values() if c is not None]
    if not costs:
        costs = [c for (e, r), slots in recorded.seconds.items() if r == rung.name for c in slots.values() if c]
    return statistics.fmean(costs) / 3600 if costs else 0.0


def control_runs(rule: str, recorded: replay.Recorded, rung) -> int:
    slots = len(recorded.values.get((recorded.baseline, rung.name), {}))
    return {"ladder": 3 * slots, "greedy": 1, "fixed_t": rung.seeds, "halving": 0}[rule]


def score(recorded: replay.Recorded, rule: str, truth: dict[str, Truth], proposer: str, repeat: int,
          eta: int) -> Score:
    outcomes = replay.replay(recorded, rule, eta)
    names = {exp: (row.get("extra") or {}).get("pool_change") for exp, row in recorded.candidates.items()}
    order = sorted(recorded.candidates, key=lambda e: recorded.order.get(e, 0))
    s = Score(recorded.name, proposer, repeat, rule)
    top = recorded.tier.rungs[-1]
    first = recorded.tier.rungs[0].name
    charged: set[str] = set()
    best_true, best_top = 0.0, None
    for exp in order:
        name = names.get(exp)
        t = truth.get(name)
        o = outcomes[exp]
        if t is None:
            continue  # not a change of this benchmark's pool
        s.proposed.append(name)
        s.outcomes[name] = o.describe()
        for rung in recorded.tier.rungs:
            read = o.read.get(rung.name, 0)
            if read and rung.name not in charged:
                charged.add(rung.name)
                s.compute_h += control_runs(rule, recorded, rung) * run_hours(recorded, recorded.baseline, rung)
            s.compute_h += read * run_hours(recorded, exp, rung)
        s.nulls_proposed += t.label == "null"
        s.untried += o.state == "untried"
        if first in o.promoted_at and t.label != "good":
            s.false_first += 1
        if o.state == "adopted":
            if t.label == "good":
                s.true_promotions += 1
                if s.first_win_h is None:
                    s.first_win_h = s.compute_h
            else:
                s.false_promotions += 1
                s.nulls_adopted += t.label == "null"
                s.bad_adopted += t.label == "bad"
            if t.effect is not None:
                best_true = min(best_true, t.effect)
            base = recorded.values.get((recorded.baseline, top.name), {})
            mine = recorded.values.get((exp, top.name), {})
            deltas = [v - base[k] for k, v in mine.items() if v is not None and base.get(k) is not None]
            if deltas and (best_top is None or statistics.fmean(deltas) < best_top):
                best_top, s.top_change = statistics.fmean(deltas), name
        elif o.state == "rejected" and t.label == "good":
            s.missed += 1
        s.curve.append((s.compute_h, best_true))
    s.top_improvement = best_top
    return s


# -----------------------------------------------------------------------------------------------------------
# Running the benchmark

def search_config(args, bench: Benchmark, name: str, *, trials: int, seed_base: int, proposer: str,
                  rungs: str | None = None, seeds: int | None = None, seed: int = 0):
    """The SearchConfig of one of the benchmark's searches, through the search's own flags."""
    argv = ["--tier", bench.tier, "--recipe", bench.recipe, "--space", "all", "--trials", str(trials), "--name", name,
            "--seed-base", str(seed_base), "--seed", str(seed), "--executor", args.executor]
    for flag, value in (("--db", args.db), ("--data", args.data), ("--runs-dir", args.runs_dir),
                        ("--parallel", args.parallel), ("--rungs", rungs), ("--seeds", seeds)):
        if value is not None:
            argv += [flag, str(value)]
    config = resolve(search_parser().parse_args(argv))
    flags = {**config.flags, "proposer": proposer, "benchmark": bench.name}
    return dataclasses.replace(config, proposer=proposer, flags=flags)


def pool_changes(bench: Benchmark, space: Space) -> list[tuple[str, dict]]:
    """(name, canonical tweaks) of every change, checked against the space relative to the benchmark's baseline."""
    out = []
    for c in bench.changes:
        try:
            tweaks = space.validate(c.tweaks)
        except SearchSpaceError as e:
            raise BadInput(f"{bench.path}: change {c.name!r}: {e}") from None
        if not tweaks:
            raise BadInput(f"{bench.path}: change {c.name!r} sets only baseline values: it is no change")
        out.append((c.name, tweaks))
    return out


def agent_client():
    """The Anthropic client for the agent proposer, made once; the API key is then removed from this process's
    environment, so no job the searches start inherits it (as harness.search does)."""
    import anthropic

    from harness.jobs import SECRET_ENV
    client = anthropic.Anthropic(max_retries=2, timeout=600.0)
    for key in SECRET_ENV:
        os.environ.pop(key, None)
    return client


def make_pool_proposer(args, strategy: str, changes, baseline: dict, seed: int, client) -> PoolProposer:
    if strategy == "agent":
        return PoolAgent(changes, baseline, seed=seed, model=args.agent_model, client=client)
    return PoolProposer(changes, strategy, seed=seed)


def run_searches(args, bench: Benchmark) -> dict[str, dict]:
    """Steps 1 and 2 (training what no search has made yet); the agent's spend per search it proposed for."""
    from harness.search import execute
    config = search_config(args, bench, f"{args.name}-truth", trials=1, seed_base=args.truth_seed_base,
                           proposer="list")
    changes = pool_changes(bench, config.space)
    planted = {c.name: c.planted for c in bench.changes}
    to_measure = [(n, t) for n, t in changes if planted[n] != "null"]
    first = config.tier.rungs[0]
    truth = search_config(args, bench, f"{args.name}-truth", trials=len(to_measure), seed_base=args.truth_seed_base,
                          proposer="list", rungs=str(first.depth), seeds=args.truth_seeds)
    print(f"benchmark {args.name!r} ({bench.name}): step 1, the truth: {len(to_measure)} changes on "
          f"{args.truth_seeds} seeds from {args.truth_seed_base} at {first.name}", flush=True)
    status, _ = execute(truth, proposer=PoolProposer(to_measure, "list"))
    if status != "finished":
        raise SearchError(f"the truth search {truth.name!r} {status}: rerun the same command to resume it")
    spend = {}
    client = agent_client() if "agent" in args.proposers else None
    baseline = {**config.tier.baseline, **config.recipe.overrides}
    for proposer in args.proposers:
        for repeat in range(args.repeats):
            name = f"{args.name}-{proposer}-{repeat}"
            config = search_config(args, bench, name, trials=args.trials, seed_base=0, proposer=proposer, seed=repeat)
            print(f"benchmark {args.name!r}: step 2, search {name!r} ({proposer}, seed {repeat}, {args.trials} "
                  f"proposals)", flush=True)
            pool = make_pool_proposer(args, proposer, changes, baseline, repeat, client)
            status, search = execute(config, proposer=pool)
            print(search_report.summary(search, status), flush=True)
            if isinstance(pool, PoolAgent):
                spend[name] = pool.spend
                cost = pool.spend["cost_usd"]
                print(f"agent spend of {name!r}: {pool.spend['calls']} calls, {pool.spend['input_tokens']:,} in / "
                      f"{pool.spend['output_tokens']:,} out tokens, "
                      + (f"${cost:.4f}" if cost is not None else "no price for the model"), flush=True)
            if status != "finished":
                raise SearchError(f"search {name!r} {status}: rerun the same command to resume it")
    return spend


def evaluate(store, args, bench: Benchmark) -> dict:
    """Step 3, from the database: the truth, every recorded search of this benchmark scored under every rule."""
    truth_search = replay.load(store, f"{args.name}-truth")
    stats = truth_search.tier.statistics
    space = Space.named("all", {**truth_search.tier.baseline, **load_recipe(bench.recipe).overrides})
    truth = {n: Truth(n, c.planted, tweaks) for (n, tweaks), c in zip(pool_changes(bench, space), bench.changes)}
    measure_truth(truth_search, [t for t in truth.values() if t.planted != "null"], stats.min_effect)
    scores = []
    for row in store.searches():
        prefix, _, rest = row["name"].partition(f"{args.name}-")
        proposer, _, repeat = rest.rpartition("-")
        if prefix or proposer not in PROPOSERS or not repeat.isdigit():
            continue
        recorded = replay.load(store, row["name"])
        for rule in args.rules:
            scores.append(score(recorded, rule, truth, proposer, int(repeat), args.eta))
    tier = truth_search.tier
    return {"benchmark": bench.name, "name": args.name, "description": bench.description, "tier": tier.name,
            "recipe": bench.recipe, "db": store.url_text, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "proposers": args.proposers, "repeats": args.repeats, "trials": args.trials, "eta": args.eta,
            "alpha": stats.alpha, "min_effect": stats.min_effect,
            "rungs": [r.name for r in replay.load(store, scores[0].search).tier.rungs] if scores else [],
            "truth": [dataclasses.asdict(t) for t in truth.values()],
            "scores": [dataclasses.asdict(s) for s in scores]}


def with_summary(report: dict) -> dict:
    """The report as written to benchmark.json: with its per proposer and rule summary (what the dashboard shows)."""
    return {**report, "summary": summarize(report)}


# -----------------------------------------------------------------------------------------------------------
# The report

def summarize(report: dict) -> list[dict]:
    """One row per (proposer, rule): the scores' means over the repeats, and the compute to the first true win."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for s in report["scores"]:
        groups.setdefault((s["proposer"], s["rule"]), []).append(s)
    rows = []
    for (proposer, rule), group in sorted(groups.items(), key=lambda kv: (PROPOSERS.index(kv[0][0]),
                                                                           replay.RULES.index(kv[0][1]))):
        wins = [s["first_win_h"] for s in group if s["first_win_h"] is not None]
        tops = [s["top_improvement"] for s in group if s["top_improvement"] is not None]
        rows.append({
            "proposer": proposer, "rule": rule, "searches": len(group),
            "true_promotions": statistics.fmean(s["true_promotions"] for s in group),
            "false_promotions": statistics.fmean(s["false_promotions"] for s in group),
            "nulls_adopted": sum(s["nulls_adopted"] for s in group),
            "nulls_proposed": sum(s["nulls_proposed"] for s in group),
            "false_first": statistics.fmean(s["false_first"] for s in group),
            "missed": statistics.fmean(s["missed"] for s in group),
            "untried": statistics.fmean(s["untried"] for s in group),
            "compute_h": statistics.fmean(s["compute_h"] for s in group),
            "wins": len(wins), "first_win_h": statistics.median(wins) if wins else None,
            "top_improvement": statistics.median(tops) if tops else None})
    return rows


def print_report(report: dict, out=None) -> None:
    out = out or sys.stdout
    print(f"\nbenchmark {report['name']!r} ({report['benchmark']}): tier {report['tier']}, baseline recipe "
          f"{report['recipe']}, rungs {' -> '.join(report['rungs'])}, alpha {report['alpha']}", file=out)
    print("the pool's truth (first rung, the benchmark's own seeds):", file=out)
    for t in report["truth"]:
        what = (f"{t['effect']:+.4f} ± {t['std_error']:.4f} (n={t['n']})" if t["effect"] is not None
                else "not run: a null by construction")
        print(f"  {t['name']:<34} planted {t['planted']:<5} measured {t['label']:<5} {what}", file=out)
    print(f"\n{'proposer':<9} {'rule':<8} {'n':>2}  {'true':>5}  {'false':>5}  {'nulls adopted':>13}  "
          f"{'false@1st':>9}  {'missed':>6}  {'untried':>7}  {'compute h':>9}  {'1st win h':>11}  "
          f"{'top-rung d':>10}", file=out)
    for r in summarize(report):
        win = f"{r['first_win_h']:.3g} ({r['wins']}/{r['searches']})" if r["first_win_h"] is not None else f"- (0/{r['searches']})"
        top = f"{r['top_improvement']:+.4f}" if r["top_improvement"] is not None else "-"
        print(f"{r['proposer']:<9} {r['rule']:<8} {r['searches']:>2}  {r['true_promotions']:>5.2f}  "
              f"{r['false_promotions']:>5.2f}  {r['nulls_adopted']:>6}/{r['nulls_proposed']:<6}  {r['false_first']:>9.2f}  "
              f"{r['missed']:>6.2f}  {r['untried']:>7.2f}  {r['compute_h']:>9.3g}  {win:>11}  {top:>10}", file=out)
    for name, used in sorted((report.get("spend") or {}).items()):
        cost = f"${used['cost_usd']:.4f}" if used.get("cost_usd") is not None else "no price for the model"
        print(f"agent spend of {name}: {used['calls']} calls, {used['input_tokens']:,} in / {used['output_tokens']:,} "
              f"out tokens, {cost}, {used['fallbacks']} scripted fallbacks", file=out)
    print("(means over each proposer's searches; true/false: changes adopted at the top rung that are / are not "
          "good; nulls adopted: summed; false@1st: not-good changes promoted at the first rung; missed: good changes "
          "rejected; untried: promoted to a rung the search never ran them at; 1st win h: median compute to the first "
          "true win, over the searches that had one; top-rung d: median of the best adopted change's mean paired "
          "difference at the top rung)", file=out)


def plot(report: dict, out_dir: Path) -> list[Path]:
    """discovery.png (best true improvement adopted vs compute, per rule, a line per search coloured by proposer)
    and outcomes.png (true and false promotions per proposer and rule)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rules = sorted({s["rule"] for s in report["scores"]}, key=lambda r: replay.RULES.index(r))
    colours = {"tpe": "tab:blue", "random": "tab:orange", "scripted": "tab:green", "agent": "tab:purple"}
    fig, axes = plt.subplots(1, max(1, len(rules)), figsize=(4.2 * max(1, len(rules)), 3.6), sharex=True, sharey=True,
                             squeeze=False)
    for ax, rule in zip(axes[0], rules):
        seen = set()
        for s in (s for s in report["scores"] if s["rule"] == rule):
            xs = [0.0] + [c[0] for c in s["curve"]]
            ys = [0.0] + [-c[1] for c in s["curve"]]
            ax.step(xs, ys, where="post", color=colours.get(s["proposer"], "grey"), alpha=0.6,
                    label=s["proposer"] if s["proposer"] not in seen else None)
            seen.add(s["proposer"])
        ax.set_title(rule)
        ax.set_xlabel("compute (calibrated hours)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best true improvement adopted (bpb)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"discovery: {report['name']} ({report['tier']})")
    fig.tight_layout()
    paths = [out_dir / "discovery.png"]
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    rows = summarize(report)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 2), 3.6))
    labels = [f"{r['proposer']}\n{r['rule']}" for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["true_promotions"] for r in rows], width=0.4, label="true promotions",
           color="tab:green")
    ax.bar([x + 0.2 for x in xs], [r["false_promotions"] + r["false_first"] for r in rows], width=0.4,
           label="false promotions (top rung + first rung)", color="tab:red")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("per search")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "outcomes.png")
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


# -----------------------------------------------------------------------------------------------------------

def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m harness.benchmark",
                       description="Measure the search: planted good, bad and null changes, proposers and decision "
                                   "rules side by side on the same runs.")
    p.add_argument("--benchmark", default="cpu", help="experiments/benchmarks/NAME.toml or a path (default: cpu)")
    p.add_argument("--name", default=None, help="prefix of its searches (default: bench-BENCHMARK)")
    p.add_argument("--proposers", default=",".join(DEFAULT_PROPOSERS),
                   help=f"comma-separated, of {', '.join(PROPOSERS)} (agent: Claude, needs ANTHROPIC_API_KEY)")
    p.add_argument("--agent-model", default=None, help="the agent's Claude model (default: the search's)")
    p.add_argument("--rules", default=",".join(replay.RULES), help=f"comma-separated, of {', '.join(replay.RULES)}")
    p.add_argument("--repeats", type=int, default=3, help="searches per proposer, on proposer seeds 0..R-1")
    p.add_argument("--trials", type=int, default=None, help="proposals per search (default: the whole pool)")
    p.add_argument("--eta", type=int, default=3, help="successive halving keeps the best 1/eta")
    p.add_argument("--truth-seeds", type=int, default=3, help="seeds of each change's truth runs")
    p.add_argument("--truth-seed-base", type=int, default=1000, help="first seed of the truth runs")
    p.add_argument("--db", default=None, help="database URL (env NANORESEARCH_DB; default sqlite:///nanoresearch.db)")
    p.add_argument("--data", default=None, help="pretraining data (env NANORESEARCH_DATA)")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--parallel", type=int, default=None, help="jobs at once (default: the tier's)")
    p.add_argument("--executor", default="local", choices=["local", "slurm", "debug"])
    p.add_argument("--out", default=None, help="where the report and plots go (default: "
                                               "$NANORESEARCH_HOME/benchmarks/NAME)")
    p.add_argument("--report-only", action="store_true", help="report from the database, train nothing")
    return p


def parse(argv: list[str] | None):
    args = build_parser().parse_args(argv)
    args.proposers = [x.strip() for x in args.proposers.split(",") if x.strip()]
    args.rules = [x.strip() for x in args.rules.split(",") if x.strip()]
    if not args.proposers or any(x not in PROPOSERS for x in args.proposers):
        raise BadInput(f"--proposers {','.join(args.proposers)!r}: expected a comma-separated list of "
                       f"{', '.join(PROPOSERS)}")
    if not args.rules or any(x not in replay.RULES for x in args.rules):
        raise BadInput(f"--rules {','.join(args.rules)!r}: expected a comma-separated list of {', '.join(replay.RULES)}")
    for flag in ("repeats", "truth_seeds", "trials"):
        value = getattr(args, flag)
        if value is not None and value < (2 if flag == "truth_seeds" else 1):
            raise BadInput(f"--{flag.replace('_', '-')} {value}: expected an integer >= "
                           f"{2 if flag == 'truth_seeds' else 1}")
    if args.eta < 2:
        raise BadInput(f"--eta {args.eta}: expected an integer >= 2")
    if "agent" in args.proposers and not args.report_only and not os.environ.get("ANTHROPIC_API_KEY"):
        raise BadInput("--proposers agent: ANTHROPIC_API_KEY is not set (the stand-in that needs no key is "
                       "`scripted`)")
    if args.truth_seed_base < 0:
        raise BadInput(f"--truth-seed-base {args.truth_seed_base}: expected a non-negative integer")
    return args


def main(argv: list[str] | None = None) -> int:
    from leaderboard import LeaderboardError, Store
    from model.home import nanoresearch_home
    try:
        args = parse(argv)
        try:
            bench = load_benchmark(args.benchmark)
        except CatalogError as e:
            raise BadInput(str(e)) from None
        args.name = args.name or f"bench-{bench.name}"
        args.trials = args.trials or len(bench.changes)
        spend = {} if args.report_only else run_searches(args, bench)
        try:
            with Store(args.db, read_only=args.report_only) as store:
                if store.find_search(f"{args.name}-truth") is None:
                    raise BadInput(f"benchmark {args.name!r}: no truth search in {store.url_text} (run it without "
                                   "--report-only first)")
                report = evaluate(store, args, bench)
        except LeaderboardError as e:
            raise BadInput(str(e)) from None
    except (BadInput, SearchError, SearchSpaceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else nanoresearch_home() / "benchmarks" / args.name
    out_dir.mkdir(parents=True, exist_ok=True)
    # The agent's spend is known to the run that made its calls: kept from an earlier report for searches not run now.
    try:
        earlier = json.loads((out_dir / REPORT_FILE).read_text()).get("spend") or {}
    except (OSError, ValueError):
        earlier = {}
    report["spend"] = {**earlier, **spend}
    (out_dir / REPORT_FILE).write_text(json.dumps(with_summary(report), indent=1))
    print_report(report)
    paths = plot(report, out_dir)
    print(f"\nreport: {out_dir / REPORT_FILE}; plots: {', '.join(str(p) for p in paths)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
