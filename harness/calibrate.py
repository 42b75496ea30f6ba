"""
`python -m harness.calibrate`: measure what a tier's ladder can resolve, and print it as a table.

    python -m harness.calibrate --tier cpu                 # every rung, the tier's max_seeds seed slots
    python -m harness.calibrate --tier cpu --rungs 2 --seeds 5

At every rung it runs the baseline and the search's two nulls (harness/experiment.py: structural = the baseline with
another initialisation on the same data order; parametric = the baseline with matrix_lr x (1 + 1e-3) on the same
seed) on N seed slots, then prints per rung and kind of change: the null spread (RMS of the paired null
differences), the minimum detectable effect at 80% power and the tier's alpha for 2..N seeds (the plain paired
t-test, n - 1 degrees of freedom, never below the null spread against the kind's control, harness/noise.py: a
search that pools its candidates does at least as well), and the cost of one run (wall seconds, CPU-minutes, training throughput). Like a search it is recorded in
the database (name TIER-calibration) and resumable; a search on the same database can reuse nothing from it (its
runs belong to this name), so run it when choosing or checking a tier's settings, not before every search.
"""

from __future__ import annotations

import statistics
import sys

from experiments.catalog import CatalogError, Tier
from harness.noise import control_spread, mde, per_look_alpha
from harness.preparation import BadInput
from harness.search import execute
from harness.search_config import build_parser, resolve, resolve_tier
from model.cli import ArgumentParser
from search_spaces import KINDS, SearchSpaceError


def build_calibrate_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m harness.calibrate", description="Measure a tier's noise per kind of change, "
                       "its minimum detectable effects and the cost of a run.")
    p.add_argument("--tier", default=None, help="cpu | gpu | path/to/tier.toml (default: gpu when CUDA is available, else cpu)")
    p.add_argument("--seeds", type=int, default=None, help="seed slots per rung (default: the tier's max_seeds)")
    p.add_argument("--rungs", default=None, help="only these depths, e.g. 2 (default: every rung of the tier)")
    p.add_argument("--flops-budget", type=float, default=None, help="override every rung's budget with FLOPS of training")
    p.add_argument("--db", default=None, help="database URL (env NANORESEARCH_DB; default sqlite:///nanoresearch.db)")
    p.add_argument("--data", default=None, help="pretraining data: a local dir or a source name (env NANORESEARCH_DATA)")
    p.add_argument("--runs-dir", default=None, help="where run dirs go (default: $NANORESEARCH_HOME/runs)")
    p.add_argument("--parallel", type=int, default=1,
                   help="jobs running at once (default 1: a quiet machine's throughput, what a rung's tok_per_s records)")
    p.add_argument("--executor", default="local", choices=["local", "slurm", "debug"])
    p.add_argument("--name", default=None, help="the calibration's name in the database (default: TIER-calibration)")
    p.add_argument("--seed-base", type=int, default=0, metavar="K", help="first seed of the seed slots")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_calibrate_parser().parse_args(argv)
    forwarded = ["--parallel", str(args.parallel), "--executor", args.executor, "--seed-base", str(args.seed_base)]
    for flag in ("tier", "rungs", "flops_budget", "db", "data", "runs_dir", "name"):
        value = getattr(args, flag)
        if value is not None:
            forwarded += ["--" + flag.replace("_", "-"), str(value)]
    try:
        design = resolve_tier(build_parser().parse_args(forwarded))  # the seeds a search starts each rung with
        seeds = args.seeds or design.statistics.max_seeds  # default: every slot adaptive seeding could ask for
        status, search = execute(resolve(build_parser().parse_args([*forwarded, "--seeds", str(seeds)]), calibrate=True))
    except (BadInput, CatalogError, SearchSpaceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(calibration_table(search, status, search.threads_per_job, design), flush=True)
    return 0 if status == "finished" else 1


def calibration_table(search, status: str, threads: int, design: Tier) -> str:
    """The calibration of a finished (or interrupted) calibration search, as text. `design`: the tier as a search
    runs it (each rung's first seed count sets the per-look alpha of its sequential test)."""
    stats = search.tier.statistics
    lines = [f"\ncalibration {search.name!r} of tier {search.tier.name} {status}: alpha {stats.alpha} (the whole "
             f"sequential test), power {stats.power:.0%}, min effect {stats.min_effect}. MDE n=k: the true improvement "
             "(bpb) a decision on k pairs promotes with that power, at the rung's per-look alpha, with the plain paired "
             "t-test's k - 1 degrees of freedom and the null spread against the kind's control (a structural change is "
             "compared with the mean of two inits: sd x 0.87; a search that pools its candidates does at least as well)"]
    for rung in search.tier.rungs:
        first_n = next((r.seeds for r in design.rungs if r.name == rung.name), stats.max_seeds)
        alpha = per_look_alpha(stats.alpha, first_n, stats.max_seeds, stats.futility)
        base = [search.val(search.result(search.baseline, rung, s)) for s in range(rung.seeds)]
        base = [v for v in base if v is not None]
        if not base:
            lines.append(f"  {rung.name}: no finished baseline run")
            continue
        spread = f" +- {statistics.stdev(base):.4f} across seeds (data order and init)" if len(base) > 1 else ""
        lines.append(f"  {rung.name} (depth {rung.depth}, {rung.describe_horizon()}): baseline val_bpb "
                     f"{statistics.fmean(base):.4f}{spread}; {run_cost(search, rung, threads)}; a search starts "
                     f"with {first_n} seeds, per-look alpha {alpha:.4f}")
        counts = range(2, rung.seeds + 1)
        lines.append(f"    {'kind':10} {'null spread':>11} {'pairs':>5}  " + " ".join(f"{'MDE n=' + str(n):>9}" for n in counts))
        for kind in KINDS:
            null = search.spreads.get((rung.name, kind))
            if null is None:
                lines.append(f"    {kind:10} {'-':>11}")
                continue
            floor = control_spread(null, kind)  # what a change of this kind is judged against (harness/noise.py)
            mdes = [mde(floor.sd, n, n - 1, alpha, stats.power, stats.min_effect) for n in counts]
            deltas = ", ".join(f"{d:+.5f}" for _, d in sorted(search.paired_deltas(search.nulls[kind], rung).items()))
            lines.append(f"    {kind:10} {null.sd:11.5f} {int(null.df):5d}  " + " ".join(f"{m:9.4f}" for m in mdes)
                         + f"   (differences {deltas})")
    return "\n".join(lines)


def run_cost(search, rung, threads: int) -> str:
    """The median cost of one run at the rung: wall seconds, CPU-minutes (wall x threads), training throughput."""
    walls, speeds, steps = [], [], []
    for exp in (search.baseline, *search.nulls.values()):
        for slot in range(rung.seeds):
            r = search.result(exp, rung, slot)
            if r is None or search.status(r) != "ok":
                continue
            wall, result = r.wall_s, r.result or {}
            if wall:
                walls.append(wall)
            if result.get("tok_per_s"):
                speeds.append(result["tok_per_s"])
            if result.get("steps"):
                steps.append(result["steps"])
    if not walls:
        return "cost unknown"
    wall = statistics.median(walls)
    speed = f", {statistics.median(speeds):,.0f} tok/s" if speeds else ""
    step = f", {int(statistics.median(steps))} steps" if steps else ""
    return f"a run takes {wall:.0f} s wall ({wall * threads / 60:.1f} CPU-min at {threads} thread{'s' if threads > 1 else ''}{step}{speed})"


if __name__ == "__main__":
    sys.exit(main())
