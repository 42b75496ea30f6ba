"""What the dashboard and `python -m harness.chat --best` show, built from the store's rows: a search's summary and
the best runs to chat with, each with a one-line "why". Pure functions of a `Store` (they only read, through its
row queries) with no Streamlit and no torch, so the dashboard pages and the chat CLI share them.

"Best" is defined once, in leaderboard/ranking.py; these use it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from leaderboard import ranking
from leaderboard.schema import NOISE_FLOOR_PROPOSER

if TYPE_CHECKING:
    from leaderboard.store import Store

_NEVER = datetime.min.replace(tzinfo=UTC)
# The columns these read of many rows (a search has thousands of runs): fetching only them keeps the pages quick.
_TRIAL_COLUMNS = ("id", "experiment_id", "rung", "seed", "status", "finished_at", "val_bpb", "total_training_time",
                  "world_size")
_DECISION_COLUMNS = ("search_id", "experiment_id", "from_rung", "to_rung", "verdict", "mean_delta", "std_error", "n",
                     "baseline_experiment_id", "created_at")


def _finish_order(run: dict[str, Any]) -> tuple:
    """Finished first, in finish order (unfinished runs last), then by id."""
    return (run["finished_at"] is None, run["finished_at"] or _NEVER, run["id"])


def is_null(experiment: dict[str, Any]) -> bool:
    """Whether an experiments row is a null: the search's noise-floor replica or an A/A null replica. Both are the
    baseline's model again under another name, run to measure the noise: never a change to rank or promote."""
    extra = experiment.get("extra")
    return experiment.get("proposer") == NOISE_FLOOR_PROPOSER or bool(isinstance(extra, dict) and extra.get("replica"))


def search_summary(store: Store, search_id: int) -> dict[str, Any] | None:
    """What the dashboard's search page shows, or None for an unknown search:

    - `search`: the searches row; `n_proposed`; `runs_by_status`: {status: count};
    - `training_hours` (sum of total_training_time: timed steps only) and `device_hours` (the search's compute, as
      `Store.device_seconds` defines it: each run's wall time times its world size);
    - `trials`: finished runs in finish order, each with its `role` (baseline, null or candidate) and
      `best_decided`: the best mean paired difference (candidate - baseline, lower is better) of a change promoted
      from its rung so far, None before the first. Only decided improvements count: a lucky seed of the baseline,
      a null or an undecided candidate never moves it. A promotion counts from the run that completed its seeds
      (the last run of the rung that finished before the decision);
    - `best`: the search's experiments best first, by the one definition of best (leaderboard/ranking.py:
      furthest up the ladder, then the lowest mean paired difference there), each {experiment_id, rung,
      mean_delta, n, beats_baseline}; the baseline and the nulls never appear;
    - `replications`: each promotion's estimate and its re-estimate on the next rung (`replications`), nulls left out;
    - `funnel`: per rung in ladder order (search config "rungs", else first-run order):
      proposed (first rung: proposals, else promotions into the rung), run (experiments with a finished
      run there, baseline included), promoted and rejected (experiments with that verdict from it).
    The noise-floor replica's runs are trials (they cost compute) but never the best, nor in the funnel:
    they are the baseline again, and a lucky init of it is noise, not progress. Nor are A/A nulls the best.
    """
    search = store.search(search_id)
    if search is None:
        return None
    runs = sorted(store.runs(search_id=search_id, columns=_TRIAL_COLUMNS), key=_finish_order)
    decided = store.decisions(search_id=search_id, columns=_DECISION_COLUMNS)  # in the order they were made
    involved = store.experiments_by_id({x["experiment_id"] for x in runs} | {x["experiment_id"] for x in decided},
                                       columns=("id", "proposer", "extra"))
    noise = {x["id"] for x in involved if x["proposer"] == NOISE_FLOOR_PROPOSER}
    nulls = {x["id"] for x in involved if is_null(x)}  # the noise-floor replica and the A/A nulls
    verdicts = list(dict.fromkeys((x["from_rung"], x["to_rung"], x["verdict"], x["experiment_id"]) for x in decided))

    baseline_id = search_baseline(search, decided)
    n_proposed = store.proposal_count(search_id, excluding=[baseline_id] if baseline_id else [])
    runs_by_status: dict[str, int] = {}
    trials = []
    ran_at: dict[str, set[str]] = {}
    for run in runs:
        runs_by_status[run["status"]] = runs_by_status.get(run["status"], 0) + 1
        if run["finished_at"] is None:
            continue
        if run["experiment_id"] not in noise:
            ran_at.setdefault(run["rung"], set()).add(run["experiment_id"])
        role = ("baseline" if run["experiment_id"] == baseline_id else
                "null" if run["experiment_id"] in nulls else "candidate")
        trials.append({"run_id": run["id"], "experiment_id": run["experiment_id"], "rung": run["rung"],
                       "seed": run["seed"], "status": run["status"], "finished_at": run["finished_at"],
                       "val_bpb": run["val_bpb"], "role": role, "best_decided": None})
    # Each promotion of a change goes to the last run of its rung that finished before it was decided.
    promoted_at: dict[int, float] = {}
    for d in decided:
        if d["verdict"] != "promote" or d["mean_delta"] is None or d["experiment_id"] in nulls:
            continue
        before = [i for i, t in enumerate(trials) if t["rung"] == d["from_rung"]
                  and (d["created_at"] is None or t["finished_at"] <= d["created_at"])]
        if before:
            promoted_at[before[-1]] = min(promoted_at.get(before[-1], math.inf), d["mean_delta"])
    best_so_far: dict[str, float] = {}
    for i, trial in enumerate(trials):
        if i in promoted_at:
            best_so_far[trial["rung"]] = min(best_so_far.get(trial["rung"], math.inf), promoted_at[i])
        trial["best_decided"] = best_so_far.get(trial["rung"])

    config = search["config"] if isinstance(search["config"], dict) else {}
    order = [str(rung) for rung in config.get("rungs") or []]
    first_run_order = [run["rung"] for run in sorted(runs, key=lambda x: x["id"])]
    for rung in first_run_order + [from_rung for from_rung, _, _, _ in verdicts]:
        if rung not in order:
            order.append(rung)
    n_at = {(x["experiment_id"], x["from_rung"]): x["n"] for x in decided}  # the latest decision's seeds
    baseline = {baseline_id} if baseline_id else set()
    best = [{"experiment_id": s.experiment_id, "rung": s.rung, "mean_delta": s.mean_delta,
             "n": n_at.get((s.experiment_id, s.rung)), "beats_baseline": s.beats_baseline()}
            for s in ranking.standings(decided, order, exclude=nulls | baseline)]
    with_verdict: dict[tuple[str, str], set[str]] = {}
    promoted_into: dict[str, set[str]] = {}
    for from_rung, to_rung, verdict, experiment_id in verdicts:
        if experiment_id in noise:
            continue
        with_verdict.setdefault((from_rung, verdict), set()).add(experiment_id)
        if verdict == "promote" and to_rung is not None:
            promoted_into.setdefault(to_rung, set()).add(experiment_id)
    funnel = []
    for i, rung in enumerate(order):
        ran = len(ran_at.get(rung, ()))
        # A search that recorded no proposals (older ones) proposed at least what ran, its baseline aside.
        proposed = max(n_proposed, len(ran_at.get(rung, set()) - baseline)) if i == 0 else len(promoted_into.get(rung, ()))
        funnel.append({"rung": rung, "proposed": proposed, "run": ran,
                       "promoted": len(with_verdict.get((rung, "promote"), ())),
                       "rejected": len(with_verdict.get((rung, "reject"), ()))})

    hours = sum(run["total_training_time"] or 0.0 for run in runs) / 3600.0
    device_hours = sum(store.device_seconds(search_id).values()) / 3600.0
    return {"search": search, "n_proposed": n_proposed, "runs_by_status": runs_by_status,
            "training_hours": hours, "device_hours": device_hours, "trials": trials, "best": best, "funnel": funnel,
            "replications": [r for r in replications(decided) if r["experiment_id"] not in nulls]}


def search_baseline(search: dict[str, Any], decisions: list[dict[str, Any]]) -> str | None:
    """The search's baseline experiment: its config's `baseline_experiment_id` when the harness put it there,
    else the baseline its latest decision compared against."""
    config = search.get("config") if isinstance(search.get("config"), dict) else {}
    if config.get("baseline_experiment_id"):
        return str(config["baseline_experiment_id"])
    for decision in reversed(decisions):
        if decision.get("baseline_experiment_id"):
            return decision["baseline_experiment_id"]
    return None


def replications(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The winner's curse, measured: each promotion's estimate next to the same change's estimate from the next rung's
    fresh runs (other seeds, a larger model), in the order the promotions were made.

    `decisions`: decision rows in the order they were made (each with experiment_id, from_rung, to_rung, verdict,
    mean_delta, std_error, n). A promotion is an experiment's last decision at a rung when it says promote; its
    replication is the experiment's latest decision at the rung it went to (`replicated_verdict` more_seeds: still
    being measured; None: no runs decided there yet). `kept` is replicated / promoted mean difference: the share of
    the promoted improvement that the fresh runs found (1 = all of it, <= 0 = none)."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for d in decisions:
        last[(d["experiment_id"], d["from_rung"])] = d
    out = []
    for (experiment_id, rung), d in last.items():
        if d["verdict"] != "promote" or d["to_rung"] is None:
            continue
        again = last.get((experiment_id, d["to_rung"]))
        promoted, replicated = d["mean_delta"], again["mean_delta"] if again else None
        kept = replicated / promoted if promoted and replicated is not None else None
        out.append({"experiment_id": experiment_id, "rung": rung, "promoted_delta": promoted,
                    "promoted_std_error": d["std_error"], "promoted_n": d["n"], "next_rung": d["to_rung"],
                    "replicated_delta": replicated, "replicated_std_error": again["std_error"] if again else None,
                    "replicated_n": again["n"] if again else None,
                    "replicated_verdict": again["verdict"] if again else None, "kept": kept})
    return out


def best_runs(store: Store, track: str | None = None) -> list[dict[str, Any]]:
    """The runs worth chatting with, best first: each a runs row (summary columns) plus `why` (one line),
    `track` and `entry_id` (both None for a search result).

    1. The ok runs of leaderboard entries (of `track`, else of every track): records before other entries;
       without `track` the deeper model's track first (times on different tracks do not compare, and a deeper
       model is the better one to talk to); then the fastest mean time-to-target (none: last), newest first on
       ties. Within an entry, its best seed first (the track's metric).
    2. Then the best search results, also when a track was asked for (a track with no entry to load falls
       back to them): ok runs of experiments a search promoted (or passed at its top rung; a null it promoted is
       left out: it is the baseline again) and of the searches' baselines; the deepest model first (a chat wants the bigger one), then at one depth the experiments by
       their search's ranking of best (leaderboard/ranking.py), the baselines after them, then the lowest val_bpb.

    Run dirs live on the machines that made them, out of the store's sight: a caller takes the first run whose
    run dir has a checkpoint where it runs."""
    tracks = {t["name"]: t for t in store.tracks()}
    entries = [x for x in store.entries(track) if x["track"] in tracks]
    entry_runs = {run["id"]: run for run in store.runs_by_id(
        i for x in entries for i in (x["run_ids"] or []) if isinstance(i, int))
        if run["status"] == "ok" and run["run_dir"] is not None}
    searches = {x["id"]: (x["name"], x["config"]) for x in store.searches()}
    baselines = {str(c["baseline_experiment_id"]) for _, c in searches.values()
                 if isinstance(c, dict) and c.get("baseline_experiment_id")}
    decisions = store.decisions(columns=_DECISION_COLUMNS)  # in the order they were made
    promoted = {x["experiment_id"] for x in decisions if x["verdict"] == "promote"}
    # A null a search promoted is a false promotion of the baseline's own model: not a result to offer.
    promoted -= {x["id"] for x in store.experiments_by_id(promoted, columns=("id", "proposer", "extra")) if is_null(x)}
    decided = [x for x in decisions if x["experiment_id"] in promoted]
    candidates = baselines | promoted
    search_runs = [run for run in (store.runs(experiment_id=candidates, status="ok") if candidates else [])
                   if run["search_id"] is not None and run["val_bpb"] is not None and run["run_dir"] is not None]

    standing: dict[tuple[int | None, str], tuple] = {}  # (search, experiment) -> its ranking key in that search
    for search_id in {x["search_id"] for x in decided}:
        config = (searches.get(search_id) or (None, None))[1]
        rungs = [str(x) for x in (config or {}).get("rungs") or []] if isinstance(config, dict) else []
        for s in ranking.standings([x for x in decided if x["search_id"] == search_id], rungs, exclude=baselines):
            standing[(search_id, s.experiment_id)] = s.key

    def entry_order(x: dict[str, Any]) -> tuple:
        ttt = x["time_to_target_mean"]
        depth = 0 if track is not None else -(tracks[x["track"]]["depth"] or 0)
        return (not x["is_record"], depth, ttt is None, ttt or 0.0, -x["created_at"].timestamp(), x["id"])

    out: list[dict[str, Any]] = []
    seen: set[int] = set()  # a run in two entries, or in an entry and a search, is listed once (its best place)
    for x in sorted(entries, key=entry_order):
        metric = tracks[x["track"]]["metric"]
        column = metric.lower()
        sign = -1.0 if column == "core" else 1.0  # CORE: higher is better; val_bpb: lower
        ranked = sorted(((run.get(column) is None, sign * (run.get(column) or 0.0), run["seed"], run["id"]), run)
                        for i in (x["run_ids"] or []) if (run := entry_runs.get(i)) is not None)
        ttt = x["time_to_target_mean"]
        timing = (f"mean time to target {ttt:.1f} s over {x['seeds']} seeds" if ttt is not None
                  else "target not reached")
        for _, run in ranked:
            if run["id"] in seen:
                continue
            seen.add(run["id"])
            value = run.get(column)
            shown = f"{value:.4f}" if value is not None else "not measured"
            why = (f"{'record' if x['is_record'] else 'entry'} #{x['id']} ({x['recipe']}) on track {x['track']}: "
                   f"{timing}; seed {run['seed']} ({metric} {shown})")
            out.append({**run, "why": why, "track": x["track"], "entry_id": x["id"]})

    def search_order(run: dict[str, Any]) -> tuple:
        key = standing.get((run["search_id"], run["experiment_id"]), (math.inf, math.inf))
        return (-(run["depth"] or 0), run["experiment_id"] in baselines, key, run["val_bpb"], run["id"])

    for run in sorted(search_runs, key=search_order):
        if run["id"] in seen:
            continue
        role = "baseline" if run["experiment_id"] in baselines else "promoted experiment"
        name = searches.get(run["search_id"], ("?", None))[0]
        why = (f"search result: {role} {run['experiment_id']} of search {name!r}, seed {run['seed']}: "
               f"val_bpb {run['val_bpb']:.4f} at rung {run['rung']} (depth {run['depth']})")
        out.append({**run, "why": why, "track": None, "entry_id": None})
    return out
