"""
`python -m harness.speedrun`: submit a recipe, or an experiment that passed a search's ladder, to a leaderboard track.

    python -m harness.speedrun --track cpu --recipe baseline --seeds 3
    python -m harness.speedrun --track gpt2-8xh100 --experiment 3f2a9c... --seeds 3 --executor slurm --slurm-partition h100
    python -m harness.speedrun --list          # the tracks, their current records (records the published ones)

What runs: seeds 0..N-1 of the recipe (or of the experiment: its tweaks and patch on its recipe) at the track's
settings: the track's tier train defaults, then the tier's baseline, the recipe, the experiment's tweaks and the
track's overrides (later wins), at the track's depth, devices (N > 1: torchrun on one node) and horizon, with
`--target` = the track's metric and target and CORE every `core_every` steps, so time-to-target is measured.
A track that sets `core_max_per_task` (0 = every example) or has CORE as its metric also evaluates CORE at the end.
The runs are recorded in the leaderboard under the experiment (for --recipe: the recipe's baseline experiment, the
same id a search of that tier uses) at rung "track:NAME", seed = 0..N-1.

The entry: mean ± std of time-to-target and of the metric, n, code version, the command that reproduces it, date.
It is a record only when (the modded-nanogpt rule) the target is met on average with significance -- a one-sided
one-sample t-test of the seeds' final metric against the target, p < 0.01 (CORE: H1 mean > target; val_bpb: H1
mean < target) -- AND its mean time-to-target beats the current record of the track (published reference entries
count as records to beat). Seeds that fail or never reach the target count against the entry:
- a failed seed (crash, divergence, timeout, OOM; status and reason recorded) contributes no numbers, and the entry
  cannot be a record: a recipe that breaks on some seeds is not reproducible;
- a seed that never reaches the target has no time-to-target: the mean time is over the seeds that reached it (the
  entry's description says "k/N seeds reached the target"), its final metric still enters the t-test, and the
  entry cannot be a record.
With one seed there is no t-test: such an entry is recorded but never a record.
- a seed that trained far below the track's calibrated throughput (`tok_per_s`; below `loaded_fraction` of it) ran on
  a loaded or slower machine: its time to target measures the machine, not the recipe. The entry says so (and that a
  loaded seed that missed the target missed it on a loaded machine) and cannot be a record.

Resumable like the search: a seed whose run finished (ok or failed) is never run again; an unfinished one resumes
from its checkpoint (every job passes --resume). Rerunning a finished speedrun records no second entry; raising
--seeds runs only the new seeds and records an entry over all of them.

The track and its published reference entries (each with its source) are recorded the first time a speedrun or
--list touches the track, and never twice.

Exit code: 0 when every seed finished ok (a record or not), 1 when a seed failed (the entry is still recorded) or the
speedrun was interrupted, 2 for bad input (one line on stderr).
"""

from __future__ import annotations

import math
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

from experiments.catalog import CatalogError, Rung, Track, load_recipe, load_tier, load_track, names
from harness import sandbox
from harness.executors import EXECUTORS, Executor, SlurmOptions
from harness.experiment import Experiment, baseline_name
from harness.jobs import Job, WandbLabels, terminate_as_interrupt, unwritable
from harness.pool import JobPool
from harness.preparation import (
    BadInput,
    check_devices,
    data_name,
    job_timeout,
    local_threads,
    patch_worktree,
    prepare_data,
    prepare_runs_dir,
    prepare_tokenizer,
)
from harness.runs import Outcome
from leaderboard.ranking import current_record
from model.cli import ArgumentParser

RECORD_ALPHA = 0.01            # the significance a record needs (modded-nanogpt's p < 0.01)
CORE_AT_END_ONLY = 10**9       # --core-every for a track that wants CORE but sets no period: only at the start and end
POLL_S = 0.5
HEARTBEAT_S = 60.0             # a progress line at least this often while seeds run


class SpeedrunError(BadInput):
    """Bad input; one line for the user, exit code 2."""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m harness.speedrun", description="Submit a recipe or experiment to a leaderboard track.")
    p.add_argument("--track", default=None, help=f"{' | '.join(names('track'))} | path/to/track.toml")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--recipe", default=None, help="a recipe (experiments/recipes; default: baseline)")
    what.add_argument("--experiment", default=None, metavar="ID", help="an experiment id from the database (e.g. one that passed a search)")
    p.add_argument("--seeds", type=int, default=3, help="seeded runs (seeds 0..N-1)")
    p.add_argument("--list", action="store_true", help="list the tracks and their records, then exit")
    p.add_argument("--db", default=None, help="database URL (env NANORESEARCH_DB; default sqlite:///nanoresearch.db)")
    p.add_argument("--data", default=None, help="pretraining data: a local dir or a source name (env NANORESEARCH_DATA)")
    p.add_argument("--eval-bundle", default=None, help="CORE bundle dir (env NANORESEARCH_EVAL_BUNDLE)")
    p.add_argument("--runs-dir", default=None, help="where run dirs go (default: $NANORESEARCH_HOME/runs)")
    p.add_argument("--executor", default="local", choices=EXECUTORS)
    p.add_argument("--parallel", type=int, default=None,
                   help="seeds running at once (default: all of them on SLURM, else 1: runs sharing a machine would "
                        "slow each other's clock)")
    p.add_argument("--dry-run", action="store_true",
                   help="print seed 0's command (and sbatch script on SLURM) with its batch, LRs, weight decay and "
                        "horizon, then exit: nothing is run, downloaded or recorded")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="also write the submission bundle for a public leaderboard into DIR (README.md with the "
                        "leaderboard row, per-seed table and test, commands, code, environment, and each seed's logs)")
    p.add_argument("--unsafe-patches", action="store_true",
                   help="run a patched experiment without a sandbox where there is none (bubblewrap); its score is still sealed")
    p.add_argument("--wandb", action="store_true",
                   help="log every seed's training run to Weights & Biases (offline files in each run dir unless "
                        "WANDB_API_KEY or WANDB_MODE=online is set), grouped by track, tagged with rung, seed and role")
    SlurmOptions.add_arguments(p, "track")
    return p


def say(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


# -----------------------------------------------------------------------------------------------------------
# The track: its rung, and its rows in the leaderboard.

def track_rung(track: Track, seeds: int) -> Rung:
    """The track's settings as a ladder rung (the shape a Job takes)."""
    horizons = [h for h in (track.time_budget, track.num_iterations, track.param_data_ratio) if h is not None]
    if len(horizons) != 1:
        raise SpeedrunError(f"track {track.name!r} ({track.path}): expected exactly one of time_budget, num_iterations, "
                            "param_data_ratio")
    if track.tok_per_s is not None and not track.tok_per_s > 0:
        raise SpeedrunError(f"track {track.name!r} ({track.path}): tok_per_s = {track.tok_per_s!r}: expected a positive throughput")
    core_every = track.core_every
    if not core_every and (track.metric == "core" or track.core_max_per_task is not None):
        core_every = CORE_AT_END_ONLY
    return Rung(name=f"track:{track.name}", depth=track.depth, seeds=seeds, time_budget=track.time_budget,
                num_iterations=track.num_iterations, param_data_ratio=track.param_data_ratio, devices=track.devices,
                nodes=track.nodes, target=track.target_spec, core_every=core_every, tok_per_s=track.tok_per_s)


def track_overrides(track: Track, tier, recipe, exp: Experiment) -> dict:
    """Every --set of the track's runs: the tier's baseline, the recipe, the experiment's tweaks, then the track's
    own overrides and CORE subset size (later wins; the tier's train defaults come from --tier)."""
    overrides = {**exp.overrides(tier.baseline, recipe.overrides), **track.overrides}
    if track.core_max_per_task is not None:
        overrides["core_max_per_task"] = track.core_max_per_task
    return {k: v for k, v in overrides.items() if v is not None}


def reference_entry(track: Track, ref: dict):
    """A published reference entry of the track's TOML as a leaderboard Entry."""
    from leaderboard import Entry
    metric = ref.get(track.metric)
    created = None
    if ref.get("date"):
        try:
            created = datetime.fromisoformat(str(ref["date"])).replace(tzinfo=UTC)
        except ValueError:
            raise SpeedrunError(f"{track.path}: reference {ref.get('name')!r} date {ref['date']!r}: expected YYYY-MM-DD") from None
    return Entry(track=track.name, recipe=str(ref.get("name") or ref["source"]), seeds=ref.get("seeds"),
                 time_to_target_mean=ref.get("time_to_target", ref.get("total_training_time")),
                 time_to_target_std=ref.get("time_to_target_std", ref.get("total_training_time_std")),
                 metric_mean=metric, metric_std=ref.get(f"{track.metric}_std"), val_bpb=ref.get("val_bpb"),
                 is_record=True, code_version=ref.get("code_version"), command=ref.get("command"),
                 source=ref["source"], created_at=created)


def record_track(store, track: Track) -> int:
    """Record the track (its latest definition) and its published references (once), and withdraw references the
    track no longer lists (a corrected number replaces the old one). Returns how many were new."""
    from leaderboard import Track as TrackRow
    config = {f.name: getattr(track, f.name) for f in fields(track)
              if f.name not in ("name", "description", "metric", "target", "depth", "hardware", "timing_rule",
                                "references", "path")}
    store.record_track(TrackRow(name=track.name, metric=track.metric, target=track.target, description=track.description,
                                depth=track.depth, hardware=track.hardware, timing_rule=track.timing_rule, config=config))
    entries = [reference_entry(track, ref) for ref in track.references]
    store.withdraw_references(track.name, keep={(e.recipe, e.source) for e in entries})
    return sum(store.record_reference(entry)[1] for entry in entries)


# -----------------------------------------------------------------------------------------------------------
# Statistics of an entry.

def one_sided_p(values: list[float], target: float, metric: str) -> float | None:
    """p-value of a one-sided one-sample t-test of the values' mean against the target, H1: the mean beats the
    target (CORE: above it; val_bpb: below it). None with fewer than 2 values (no variance to test with)."""
    from scipy import stats
    n = len(values)
    if n < 2:
        return None
    beats_by = statistics.fmean(values) - target if metric == "core" else target - statistics.fmean(values)
    sd = statistics.stdev(values)
    if sd == 0:  # identical seeds: the test degenerates; the sign alone decides
        return 0.0 if beats_by > 0 else 1.0
    return float(stats.t.sf(beats_by / (sd / math.sqrt(n)), df=n - 1))


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class Summary:
    seeds: int                          # submitted
    ok: int                             # finished with status ok
    reached: int                        # ok and reached the target
    time_to_target_mean: float | None   # over the seeds that reached the target
    time_to_target_std: float | None
    metric_mean: float | None           # the track's metric at the end of training, over ok seeds
    metric_std: float | None
    metric_n: int
    val_bpb: float | None               # mean over ok seeds
    p_value: float | None
    is_record: bool
    why: str
    failures: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)  # seeds that trained on a loaded machine, with their throughput

    def note(self) -> str:
        """What the entry's description adds when not every seed counted."""
        parts = []
        if self.reached < self.seeds:
            parts.append(f"{self.reached}/{self.seeds} seeds reached the target")
        if self.ok < self.seeds:
            parts.append(f"{self.seeds - self.ok} failed")
        if self.loaded:
            parts.append(f"{len(self.loaded)} on a loaded machine")
        return f" [{', '.join(parts)}]" if parts else ""


def summarize(runs: list[dict], seeds: int, metric: str, target: float, record: dict | None,
              alpha: float = RECORD_ALPHA, calibrated_tok_per_s: float | None = None) -> Summary:
    """The entry of `seeds` finished runs (leaderboard rows: status, val_bpb, core, time_to_target, seed, tok_per_s,
    loaded), and whether it is a record against the current `record` entry (None: the track has none)."""
    ok = [r for r in runs if r["status"] == "ok"]
    loaded = [f"seed {r['seed']} {r['tok_per_s']:,.0f} tok/s" + ("" if r["time_to_target"] is not None else ", target missed")
              for r in sorted(ok, key=lambda r: r["seed"]) if r.get("loaded") and r.get("tok_per_s") is not None]
    calibrated = f" against a calibrated {calibrated_tok_per_s:,.0f}" if calibrated_tok_per_s else ""
    failures = [f"seed {r['seed']} {r['status']}" + (f": {r['reason']}" if r.get("reason") else "")
                for r in sorted(runs, key=lambda r: r["seed"]) if r["status"] != "ok"]
    failures += [f"seed {s} has no run" for s in range(seeds) if s not in {r["seed"] for r in runs}]
    times = [r["time_to_target"] for r in ok if r["time_to_target"] is not None]
    values = [r[metric] for r in ok if r[metric] is not None]
    ttt_mean, ttt_std = _mean_std(times)
    metric_mean, metric_std = _mean_std(values)
    val_bpb, _ = _mean_std([r["val_bpb"] for r in ok if r["val_bpb"] is not None])
    p = one_sided_p(values, target, metric)
    op = ">" if metric == "core" else "<"

    is_record = False
    if failures:
        why = f"not a record: {len(failures)} of {seeds} seeds failed ({'; '.join(failures)})"
    elif loaded:
        why = (f"not comparable: {len(loaded)} of {seeds} seeds trained on a loaded machine ({'; '.join(loaded)}"
               f"{calibrated}), so their time to target measures the machine; rerun them on a quiet one")
    elif len(times) < seeds:
        why = f"not a record: {seeds - len(times)} of {seeds} seeds never reached the target"
    elif len(values) < seeds:
        why = f"not a record: {metric} was not measured on {seeds - len(values)} of {seeds} seeds"
    elif p is None:
        why = f"not a record: significance needs at least 2 seeds (got {len(values)})"
    elif p >= alpha:
        why = (f"not a record: mean {metric} {metric_mean:.4f} is not significantly {op} the target {target:g} "
               f"(one-sided t-test p = {p:.3g} >= {alpha:g})")
    elif record is not None and not ttt_mean < record["time_to_target_mean"]:
        why = (f"not a record: mean time to target {ttt_mean:.1f} s does not beat the record's "
               f"{record['time_to_target_mean']:.1f} s (entry #{record['id']}, {record['recipe']})")
    else:
        is_record = True
        beats = (f"beats the record's {record['time_to_target_mean']:.1f} s (entry #{record['id']}, {record['recipe']})"
                 if record is not None else "is the track's first record")
        why = (f"a new record: mean {metric} {metric_mean:.4f} {op} {target:g} (p = {p:.3g} < {alpha:g}) and mean time "
               f"to target {ttt_mean:.1f} s {beats}")
    return Summary(seeds=seeds, ok=len(ok), reached=len(times), time_to_target_mean=ttt_mean,
                   time_to_target_std=ttt_std, metric_mean=metric_mean, metric_std=metric_std, metric_n=len(values),
                   val_bpb=val_bpb, p_value=p, is_record=is_record, why=why, failures=failures, loaded=loaded)


# -----------------------------------------------------------------------------------------------------------
# Running the seeds.

def run_jobs(jobs: list[Job], pool: JobPool, parallel: int, estimate_s: float | None) -> bool:
    """Run the jobs, `parallel` at a time, through the pool (which records each run as it starts and ends), with a
    line per finished seed and a heartbeat while they run. False when interrupted."""
    pending, walls = list(jobs), []
    total, done, last_line = len(jobs), 0, time.monotonic()

    def eta() -> str:
        per_job = statistics.fmean(walls) if walls else estimate_s
        if per_job is None:
            return "ETA unknown"
        oldest = max((r.age_s() for r in pool), default=0.0)
        rounds = math.ceil((len(pending) + len(pool)) / parallel)
        return f"ETA {max(0.0, rounds * per_job - min(oldest, per_job)) / 60:.1f} min"

    try:
        with terminate_as_interrupt():  # `kill PID` stops the seeds as Ctrl-C does
            while pending or pool:
                while pending and len(pool) < parallel:
                    job = pending.pop(0)
                    pool.submit(job)
                    say(f"start seed {job.seed} -> {job.run_dir}")
                time.sleep(POLL_S)
                for f in pool.collect():
                    walls.append(f.wall_s)
                    done += 1
                    last_line = time.monotonic()
                    flag = (f" | LOADED: {f.outcome.tok_per_s:,.0f} tok/s against a calibrated {f.expected_tok_per_s:,.0f}: "
                            "its time to target measures the machine" if f.outcome.loaded else "")
                    say(f"done  seed {f.job.seed}: {describe_outcome(f.outcome)}{flag} | {done}/{total} seeds this session, "
                        f"{eta()}")
                if pool and time.monotonic() - last_line >= HEARTBEAT_S:
                    last_line = time.monotonic()
                    ages = ", ".join(f"seed {r.job.seed} {r.age_s() / 60:.1f} min" for r in pool)
                    say(f"running: {ages} | {done}/{total} seeds this session, {eta()}")
    except KeyboardInterrupt:
        say("interrupted: stopping the running seeds (each saves a checkpoint first)")
        pool.stop_all()
        say("stopped; rerun the same command to resume")
        return False
    return True


def describe_outcome(outcome: Outcome) -> str:
    if not outcome.ok:
        return f"{outcome.status}: {outcome.reason}"
    result = outcome.result or {}
    ttt = result.get("time_to_target")
    core = f", CORE {result['core']:.4f}" if result.get("core") is not None else ""
    reached = f"time to target {ttt:.1f} s" if ttt is not None else "target not reached"
    return f"val_bpb {result.get('val_bpb'):.4f}{core}, {reached}, training time {result.get('total_training_time', 0):.1f} s"


# -----------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (BadInput, CatalogError) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 2


def open_store(url: str | None):
    from leaderboard import LeaderboardError, Store
    try:
        return Store(url)
    except LeaderboardError as e:
        raise SpeedrunError(str(e)) from None


def list_tracks(args) -> int:
    store = open_store(args.db)
    for name in names("track"):
        track = load_track(name)
        new = record_track(store, track)
        record = current_record(store.leaderboard(track.name))
        best = (f"record {record['time_to_target_mean']:.1f} s ({record['time_to_target_mean'] / 3600:.2f} h) by "
                f"{record['recipe']}" if record else "no record yet")
        print(f"{track.name:14} {track.target_spec:18} depth {track.depth:<3} {track.hardware:16} {best}"
              + (f" ({new} published references recorded now)" if new else ""))
    return 0


def dry_run(args, track: Track, tier, rung, slurm) -> int:
    """`--dry-run`: the track's job for seed 0 as it would run (harness/dry_run.py). Only --recipe: an experiment
    lives in the database, which a dry run does not open."""
    from harness import dry_run as plans
    from model.home import nanoresearch_home
    from model.provenance import code_version
    if args.experiment is not None:
        raise SpeedrunError("--dry-run: only with --recipe (an --experiment is read from the database, which a dry run "
                            "does not touch)")
    recipe = load_recipe(args.recipe or "baseline")
    exp = Experiment(tweaks={}, tier=tier.name, recipe=recipe.name, code_version=code_version(), proposer="baseline")
    runs_root = (Path(args.runs_dir) if args.runs_dir else nanoresearch_home() / "runs") / "speedrun" / track.name
    data = data_name(args.data, tier)
    job = Job(experiment_id=exp.id, rung=rung, slot=0, seed=0, data_seed=track.data_seed,
              run_dir=runs_root / exp.id / "seed0", train_tier=tier.train_tier,
              overrides=track_overrides(track, tier, recipe, exp), data=data, timeout_s=job_timeout(rung))
    say(f"speedrun on track {track.name!r}, dry run: recipe {recipe.name}, {args.seeds} seeds, data {data}, executor "
        f"{args.executor}; seed 0's job:")
    plans.describe(job, Executor(args.executor, runs_root / "submitit", slurm), say)
    say("dry run: nothing was run, downloaded or recorded")
    return 0


def load_experiment(args, store, tier) -> tuple[Experiment, str, object]:
    """(experiment, its id in the database, its recipe) for --recipe or --experiment."""
    from model.provenance import code_version
    if args.experiment is None:
        recipe = load_recipe(args.recipe or "baseline")
        exp = Experiment(tweaks={}, tier=tier.name, recipe=recipe.name, code_version=code_version(),
                         proposer="baseline", name=baseline_name(recipe.name))
        store.record_experiment(exp.record())
        return exp, exp.id, recipe
    row = store.experiment(args.experiment)
    if row is None:  # an id prefix, as the search's tables print them
        matches = [x for x in store.experiments() if x["id"].startswith(args.experiment)] if len(args.experiment) >= 6 else []
        if len(matches) != 1:
            raise SpeedrunError(f"--experiment {args.experiment!r}: {'no' if not matches else 'more than one'} experiment "
                                f"with that id in {store.url_text} (expected an id printed by harness.search, e.g. "
                                "'passed the ladder: ID')")
        row = store.experiment(matches[0]["id"])
    extra = dict(row.get("extra") or {})
    exp = Experiment(tweaks=row.get("tweaks") or {}, tier=extra.get("tier", tier.name), recipe=extra.get("recipe", "baseline"),
                     code_version=row.get("code_version") or "unknown", proposer=row.get("proposer") or "manual",
                     name=row.get("name"), patch=row.get("patch"), replica=extra.get("replica", 0) or 0)
    return exp, row["id"], load_recipe(exp.recipe)


def run(args) -> int:
    from leaderboard import Entry
    from model.home import nanoresearch_home
    from model.provenance import code_version

    if args.list:
        return list_tracks(args)
    if args.track is None:
        raise SpeedrunError(f"--track is required: expected one of {', '.join(names('track'))} or a path to a .toml file")
    if args.seeds < 1:
        raise SpeedrunError(f"--seeds {args.seeds}: expected a positive integer")
    if args.parallel is not None and args.parallel < 1:
        raise SpeedrunError(f"--parallel {args.parallel}: expected a positive integer")
    try:
        slurm = SlurmOptions.from_args(args)
    except ValueError as e:
        raise SpeedrunError(str(e)) from None
    track = load_track(args.track)
    tier = load_tier(track.tier)
    rung = track_rung(track, args.seeds)
    if args.dry_run:
        return dry_run(args, track, tier, rung, slurm)
    if args.export and (why := unwritable(Path(args.export))):
        raise SpeedrunError(f"--export {args.export}: {why}; expected a writable directory for the submission bundle")
    check_devices(tier, args.executor, f"--track {track.name}", "--track cpu")
    source = prepare_data(args.data, tier)  # bad data is one line before anything is recorded
    runs_root = prepare_runs_dir((Path(args.runs_dir) if args.runs_dir else nanoresearch_home() / "runs") / "speedrun"
                                 / track.name)
    store = open_store(args.db)
    exp, experiment_id, recipe = load_experiment(args, store, tier)
    new_references = record_track(store, track)

    if exp.patch and not args.unsafe_patches and (why := sandbox.unavailable()):
        raise BadInput(f"--experiment {experiment_id}: it carries a code patch, whose runs need a sandbox, and there is "
                       f"none here: {why}. Install bubblewrap, or pass --unsafe-patches to run it without one")
    if exp.tier != tier.name:
        say(f"note: experiment {experiment_id} was proposed on tier {exp.tier!r}; the track runs it on tier {tier.name!r}")
    if not exp.patch and exp.code_version not in ("unknown", code_version()):
        say(f"note: experiment {experiment_id} was proposed on code {exp.code_version}; its runs use this checkout "
            f"({code_version()}), which the entry records")

    overrides = track_overrides(track, tier, recipe, exp)

    finished = store.finished_keys()
    todo = [seed for seed in range(args.seeds) if (experiment_id, rung.name, seed) not in finished]
    parallel = args.parallel or (args.seeds if args.executor == "slurm" else 1)
    label = exp.name or exp.describe()
    say(f"speedrun on track {track.name!r} ({track.target_spec}, depth {track.depth}, {' '.join(rung.horizon_args())}, "
        f"{track.devices} device{'s' if track.devices > 1 else ''}): {label} = experiment {experiment_id}, "
        f"{args.seeds} seeds ({args.seeds - len(todo)} already finished), executor {args.executor} x{parallel}; "
        f"results in {store.url_text}, runs in {runs_root / experiment_id}"
        + (f"; {new_references} published reference entries recorded" if new_references else ""))

    if todo:
        tokenizer_dir = prepare_tokenizer(source, tier.train_tier, overrides)
        workdir = patch_worktree(exp, experiment_id, sandboxed=not args.unsafe_patches)
        jobs = [Job(experiment_id=experiment_id, rung=rung, slot=seed, seed=seed, data_seed=track.data_seed,
                    run_dir=runs_root / experiment_id / f"seed{seed}", train_tier=tier.train_tier, overrides=overrides,
                    data=args.data or source.name, tokenizer=tokenizer_dir, timeout_s=job_timeout(rung),
                    workdir=workdir, sandbox=not args.unsafe_patches,
                    wandb=WandbLabels(group=f"speedrun {track.name}", experiment=experiment_id,
                                      name=f"{experiment_id} {track.name} seed{seed}",
                                      tags=(f"rung:{rung.name}", f"seed:{seed}",
                                            "baseline" if exp.is_baseline else "candidate")) if args.wandb else None)
                for seed in todo]
        env, share = local_threads(tier.train_tier, args.executor, parallel)
        if args.eval_bundle:
            env["NANORESEARCH_EVAL_BUNDLE"] = str(Path(args.eval_bundle).resolve())
        executor = Executor(args.executor, runs_root / "submitit", slurm, env)
        pool = JobPool(executor, store, throughput_share=share, loaded_fraction=track.loaded_fraction)
        estimate = rung.time_budget * 1.5 + 60 if rung.time_budget is not None else None
        if not run_jobs(jobs, pool, parallel, estimate):
            return 1

    rows = {r["seed"]: r for r in store.runs(experiment_id=experiment_id, rung=rung.name, details=True)}
    runs = [rows[s] for s in range(args.seeds) if s in rows and rows[s]["status"] != "running"]
    run_ids = sorted(r["id"] for r in runs)
    entries = store.leaderboard(track.name)
    existing = next((e for e in entries if e["experiment_id"] == experiment_id and sorted(e["run_ids"] or []) == run_ids), None)
    record = current_record([e for e in entries if existing is None or e["id"] != existing["id"]])
    summary = summarize(runs, args.seeds, track.metric, track.target, record, calibrated_tok_per_s=track.tok_per_s)
    versions = sorted({(r.get("config") or {}).get("code_version") for r in runs} - {None})
    command = ["python", "-m", "harness.speedrun", "--track", args.track,
               *(["--experiment", experiment_id] if args.experiment else ["--recipe", recipe.name]),
               "--seeds", str(args.seeds), *(["--data", args.data] if args.data else [])]
    if existing is None:
        entry_id = store.record_entry(Entry(
            track=track.name, recipe=label + summary.note(), experiment_id=experiment_id, seeds=args.seeds,
            time_to_target_mean=summary.time_to_target_mean, time_to_target_std=summary.time_to_target_std,
            metric_mean=summary.metric_mean, metric_std=summary.metric_std, val_bpb=summary.val_bpb,
            p_value=summary.p_value, is_record=summary.is_record, code_version=", ".join(versions) or code_version(),
            command=shlex.join(command), run_ids=run_ids))
        recorded = f"entry #{entry_id} recorded"
    else:
        entry_id = existing["id"]
        recorded = f"entry #{entry_id} already records these runs (record when submitted: {'yes' if existing['is_record'] else 'no'})"
    print(format_summary(track, label, runs, summary, recorded), flush=True)
    if args.export:
        from harness.speedrun_export import write_bundle
        readme = write_bundle(Path(args.export), track=track, label=label, experiment=exp, experiment_id=experiment_id,
                              recipe=recipe, runs=runs, summary=summary, command=shlex.join(command),
                              code_version=", ".join(versions) or code_version(), entry_id=entry_id)
        print(f"submission bundle: {readme.parent} (start with {readme.name})", flush=True)
    return 1 if summary.failures else 0


def format_summary(track: Track, label: str, runs: list[dict], s: Summary, recorded: str) -> str:
    metric, unit = track.metric, "s"
    lines = [f"\nspeedrun on track {track.name!r}: {label}, {s.seeds} seeds ({recorded})"]
    for r in sorted(runs, key=lambda r: r["seed"]):
        if r["status"] != "ok":
            lines.append(f"  seed {r['seed']}: {r['status']}: {r.get('reason')}")
            continue
        ttt = f"{r['time_to_target']:.1f} {unit}" if r["time_to_target"] is not None else "never"
        value = f"{r[metric]:.4f}" if r[metric] is not None else "not measured"
        speed = f", {r['tok_per_s']:,.0f} tok/s" if r.get("tok_per_s") is not None else ""
        speed += " (LOADED machine)" if r.get("loaded") else ""
        lines.append(f"  seed {r['seed']}: {metric} {value}, time to target {ttt}, training time "
                     f"{r['total_training_time'] or 0:.1f} {unit}{speed}  ({r['run_dir']})")

    def pm(mean, std, digits):
        return "-" if mean is None else f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")
    lines.append(f"  time to target {pm(s.time_to_target_mean, s.time_to_target_std, 1)} {unit} "
                 f"({s.reached} of {s.seeds} seeds reached {track.target_spec})")
    p = f", one-sided t-test against {track.target:g}: p = {s.p_value:.3g}" if s.p_value is not None else ""
    lines.append(f"  {metric} {pm(s.metric_mean, s.metric_std, 4)} (n = {s.metric_n}){p}")
    lines.append(f"  verdict: {s.why}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
