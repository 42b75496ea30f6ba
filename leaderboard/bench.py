"""`python -m leaderboard bench`: how fast the store records runs, and how fast the dashboard's queries
answer at search scale (10,000 runs with 1,000,000 metric points by default).

Runs are recorded the way the harness records them: one `record_run` (experiment, run and its points
in one transaction) per run. Without --db it uses a throwaway SQLite file; a database given with --db
must hold no runs yet (the bench writes thousands of synthetic ones).
"""

import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from leaderboard.errors import LeaderboardError
from leaderboard.identity import experiment_id
from leaderboard.progress import Progress
from leaderboard.records import Decision, Entry, Experiment, Run, Track
from leaderboard.schema import utcnow
from leaderboard.store import Store
from leaderboard.views import search_summary

RUNGS = ("d2", "d4")
SEEDS = (0, 1)
QUERY_LIMIT_S = 1.0
QUERY_REPEATS = 3


def _points(n: int, rng: random.Random) -> list[dict[str, Any]]:
    loss = 7.0 + rng.random()
    points = []
    for step in range(n):
        loss *= 0.995
        points.append({"step": step * 10, "tokens": step * 10 * 32768, "elapsed_train_s": step * 0.6,
                       "train_loss": loss, "val_bpb": loss / 3.0, "core": None, "tok_per_s": 52000.0, "mfu": 0.41})
    return points


def _timed(query: Callable[[], Any]) -> tuple[float, float]:
    """(first, best) wall seconds over QUERY_REPEATS calls."""
    times = []
    for _ in range(QUERY_REPEATS):
        start = time.perf_counter()
        query()
        times.append(time.perf_counter() - start)
    return times[0], min(times)


def bench(store: Store, n_runs: int, n_points: int, out: TextIO) -> dict[str, float]:
    if store.counts()["runs"]:
        raise LeaderboardError(f"bench writes {n_runs} synthetic runs: expected a database without runs, "
                               f"{store.url_text} has {store.counts()['runs']}")
    rng = random.Random(0)
    search_id = store.start_search("bench", tier="cpu", space="bench", proposer="bench", config={"rungs": list(RUNGS)})
    per_run, extra = divmod(n_points, n_runs)
    t0 = utcnow()
    progress = Progress(n_runs, "bench: recording runs")
    experiments: list[str] = []
    start = time.perf_counter()
    for i in range(n_runs):
        n_exp, slot = divmod(i, len(RUNGS) * len(SEEDS))
        rung, seed = RUNGS[slot // len(SEEDS)], SEEDS[slot % len(SEEDS)]
        exp = Experiment(id=experiment_id({"bench": n_exp}), name=f"bench-{n_exp}", tweaks={"knob": n_exp % 7},
                         proposer="bench", code_version="bench")
        if slot == 0:
            experiments.append(exp.id)
        status = "ok" if rng.random() < 0.95 else rng.choice(["diverged", "failed"])
        started = t0 + timedelta(seconds=60 * i)
        run = Run(experiment_id=exp.id, rung=rung, seed=seed, status=status, depth=int(rung[1:]),
                  hardware="cpu: bench", world_size=1, started_at=started, finished_at=started + timedelta(seconds=55),
                  config={"depth": int(rung[1:]), "seed": seed, "overrides": exp.tweaks},
                  val_bpb=1.9 - 0.2 * RUNGS.index(rung) + rng.gauss(0, 0.01) if status == "ok" else None,
                  total_training_time=50 + 10 * rng.random(), tokens=10_000_000, flops=1e15, search_id=search_id)
        store.record_run(run, _points(per_run + (i < extra), rng), experiment=exp)
        progress.update(i + 1)
    progress.close()
    insert_s = time.perf_counter() - start

    start = time.perf_counter()
    for exp_id in experiments:
        store.record_decision(Decision(
            experiment_id=exp_id, search_id=search_id, from_rung=RUNGS[0], to_rung=RUNGS[1],
            baseline_experiment_id=experiments[0], verdict="promote" if rng.random() < 0.2 else "reject",
            deltas=[rng.gauss(0, 0.01) for _ in SEEDS], n=len(SEEDS), alpha=0.05, min_effect=0.005))
    store.record_track(Track(name="bench", metric="val_bpb", target=1.8, description="synthetic bench track"))
    n_entries = max(1, n_runs // 10)
    for i in range(n_entries):
        ttt = [rng.uniform(100, 1000) for _ in range(3)]
        store.record_entry(Entry(track="bench", recipe=f"recipe-{i}", experiment_id=experiments[i % len(experiments)],
                                 seeds=3, time_to_target_mean=statistics.mean(ttt),
                                 time_to_target_std=statistics.stdev(ttt), metric_mean=1.79, source="bench"))
    other_s = time.perf_counter() - start

    results = {"runs": n_runs, "points": n_points, "insert_s": insert_s, "runs_per_s": n_runs / insert_s,
               "points_per_s": n_points / insert_s}
    print(f"store: {store.url_text}", file=out)
    print(f"insert: {n_runs} runs + {n_points} metric points in {insert_s:.1f} s: {n_runs / insert_s:.1f} runs/s, "
          f"{n_points / insert_s:.0f} points/s (one record_run transaction per run)", file=out)
    print(f"insert: {len(experiments)} decisions + {n_entries} entries in {other_s:.1f} s", file=out)
    some_runs = [r["id"] for r in store.runs(search_id=search_id)[:10]]
    queries = {
        f"leaderboard ({n_entries} entries)": lambda: store.leaderboard("bench"),
        f"search_summary ({n_runs} runs)": lambda: search_summary(store, search_id),
        f"runs of the search ({n_runs})": lambda: store.runs(search_id=search_id),
        "finished_keys": lambda: store.finished_keys(search_id),
        "metric_points of 10 runs": lambda: store.metric_points(some_runs),
    }
    for name, query in queries.items():
        first, best = _timed(query)
        verdict = "ok" if first < QUERY_LIMIT_S else "EXCEEDED"
        print(f"query {name}: first {first * 1000:.1f} ms, best of {QUERY_REPEATS} {best * 1000:.1f} ms "
              f"(limit {QUERY_LIMIT_S:.0f} s: {verdict})", file=out)
        results[f"query {name}"] = first
    return results


def run_bench(url: str | None, n_runs: int, n_points: int, out: TextIO) -> dict[str, float]:
    if n_runs < 1 or n_points < 0:
        raise LeaderboardError(f"--runs {n_runs} --points {n_points}: expected runs >= 1 and points >= 0")
    if url is not None:
        with Store(url) as store:
            return bench(store, n_runs, n_points, out)
    with tempfile.TemporaryDirectory(prefix="nanoresearch-bench-") as tmp:
        with Store(f"sqlite:///{Path(tmp) / 'bench.db'}") as store:
            results = bench(store, n_runs, n_points, out)
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        print(f"sqlite files: {size / 1e6:.1f} MB", file=out)
        return results
