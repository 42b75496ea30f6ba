"""What the dashboard pages show, computed from the store's rows: plain functions, no Streamlit.

Kept apart from the pages so the numbers on screen (mean ± std, best-so-far, agent spend, config diffs)
can be checked without rendering anything, and so every page formats the same value the same way.
"""

import json
import math
import re
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd

from leaderboard.schema import HYPOTHESIS_STATUSES

MISSING = "—"  # what a cell shows for a value that was not measured (never 0: that would be a result)

# Every ASCII punctuation character Markdown, or Streamlit's extensions to it ($math$, :emoji:, :red[color]), reads.
_MARKDOWN_SYNTAX = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")


def markdown_literal(text: str) -> str:
    """`text` for a place that renders Markdown (st.markdown, st.write_stream, badges), escaped so that it shows
    exactly as written: a model's `3*1008*200+150` is arithmetic, not emphasis. Line breaks are kept."""
    return _MARKDOWN_SYNTAX.sub(r"\\\1", text).replace("\n", "  \n")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if _finite(value) else MISSING


def mean_std(mean: Any, std: Any, digits: int = 4) -> str:
    """"0.2612 ± 0.0021"; just the mean when no std was measured (a single seed)."""
    if not _finite(mean):
        return MISSING
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if _finite(std) else f"{mean:.{digits}f}"


def duration_unit(seconds: Iterable[Any]) -> tuple[str, float]:
    """One unit for a whole column (h, min or s, by its largest value) so its rows compare at a glance."""
    largest = max((s for s in seconds if _finite(s)), default=0.0)
    if largest >= 3600:
        return "h", 3600.0
    if largest >= 60:
        return "min", 60.0
    return "s", 1.0


def duration(seconds: Any) -> str:
    if not _finite(seconds):
        return MISSING
    unit, scale = duration_unit([seconds])
    return f"{seconds / scale:.2f} {unit}"


def date(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d") if isinstance(value, datetime) else MISSING


def short_version(code_version: str | None) -> str:
    """A git hash is shown like GitHub does (7 characters); anything else (a tag, 'bench') as is."""
    if not code_version:
        return MISSING
    text = code_version.strip()
    is_hash = len(text) >= 12 and all(c in "0123456789abcdef" for c in text.lower().removesuffix("-dirty"))
    return text[:7] + ("-dirty" if text.endswith("-dirty") else "") if is_hash else text


def experiment_link(experiment_id: str | None) -> str | None:
    """A link to the Experiment page (its url_path) that works from any page and in a new tab."""
    return f"experiment?id={experiment_id}" if experiment_id else None


# ------------------------------------------------------------------------------------------------ leaderboard

def metric_label(metric: str) -> str:
    return "CORE" if metric.lower() == "core" else metric


def leaderboard_table(entries: list[dict[str, Any]], metric: str) -> tuple[pd.DataFrame, str]:
    """The track's table in nanochat's shape (rank, time, metric, val_bpb, description, date, commit...).
    Returns the frame and the time unit used in its header."""
    unit, scale = duration_unit(e["time_to_target_mean"] for e in entries)
    label = metric_label(metric)
    rows = []
    for e in entries:
        ttt_mean, ttt_std = e["time_to_target_mean"], e["time_to_target_std"]
        measured = mean_std(e["metric_mean"], e["metric_std"])
        rows.append({
            "#": e["rank"],
            "recipe": e["recipe"],
            f"time to target ({unit})": mean_std(ttt_mean / scale if _finite(ttt_mean) else None,
                                                  ttt_std / scale if _finite(ttt_std) else None, digits=2),
            "seeds": e["seeds"],
            label: measured,
            # On a val_bpb track the metric column is the val_bpb column (mean ± std when measured so).
            "val_bpb": measured if label == "val_bpb" and measured != MISSING else number(e["val_bpb"]),
            "p-value": number(e["p_value"], 3),
            "record": "★" if e["is_record"] else "",
            "date": date(e["created_at"]),
            "code version": short_version(e["code_version"]),
            "source": e["source"] or "",
            "details": experiment_link(e["experiment_id"]),
        })
    return pd.DataFrame(rows), unit


BEST_PER_DEPTH = 10


def best_runs_table(runs: list[dict[str, Any]], names: Mapping[str, str], depth: int | None = None,
                    per_depth: int = BEST_PER_DEPTH, nulls: Collection[str] = ()) -> pd.DataFrame:
    """The best experiments by their finished runs, whoever made them (a search, a speedrun, or `model.train` by hand
    then `python -m leaderboard ingest`): within each depth (depth sets the model, so only same-depth numbers
    compare; `depth` keeps one, a track's), one row per experiment and rung (a rung is one training budget), ranked
    by the mean final val_bpb over its seeds, with n and the spread: one lucky seed does not top the table.
    The experiments in `nulls` (leaderboard.views.is_null: the baseline again, run to measure noise) are left out:
    a lucky null ranked above the changes would read as an improvement nobody made."""
    def group(r) -> str:  # runs recorded without a depth are grouped by their rung name
        return f"d{r['depth']}" if r.get("depth") is not None else r["rung"]

    ok = [r for r in runs if r["status"] == "ok" and _finite(r["val_bpb"])
          and (depth is None or r.get("depth") == depth) and r["experiment_id"] not in nulls]
    rows = []
    for where in sorted({group(r) for r in ok}, key=rung_key):
        arms: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in ok:
            if group(r) == where:
                arms.setdefault((r["experiment_id"], r["rung"]), []).append(r)
        summaries = []
        for (experiment_id, rung), group_runs in arms.items():
            values = [r["val_bpb"] for r in group_runs]
            std = float(pd.Series(values).std()) if len(values) > 1 else None
            cores = [r["core"] for r in group_runs if _finite(r.get("core"))]
            times = [r["total_training_time"] for r in group_runs if _finite(r.get("total_training_time"))]
            summaries.append((sum(values) / len(values), experiment_id, rung, len(values), std,
                              sum(cores) / len(cores) if cores else None, sum(times) / len(times) if times else None,
                              max((r.get("finished_at") or r.get("started_at") for r in group_runs
                                   if r.get("finished_at") or r.get("started_at")), default=None)))
        for rank, (mean, experiment_id, rung, n, std, core, time, when) in enumerate(sorted(summaries)[:per_depth], 1):
            rows.append({
                "depth": where, "#": rank, "experiment": names.get(experiment_id, experiment_id), "rung": rung,
                "seeds": n, "val_bpb": mean_std(mean, std), "CORE": number(core), "training time": duration(time),
                "latest": date(when), "details": experiment_link(experiment_id),
            })
    return pd.DataFrame(rows, columns=["depth", "#", "experiment", "rung", "seeds", "val_bpb", "CORE", "training time",
                                       "latest", "details"])


# ------------------------------------------------------------------------------------------------ search

def agent_usage(experiments: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum of the agent's tokens and dollars over experiments whose `extra["agent"]` records them, in all and
    per model. Experiments proposed without the agent (no such record) are not counted."""
    totals = {"experiments": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
    per_model: dict[str, dict[str, Any]] = {}
    for experiment in experiments:
        extra = experiment.get("extra")
        agent = extra.get("agent") if isinstance(extra, dict) else None
        if not isinstance(agent, dict):
            continue
        model = str(agent.get("model") or "unknown")
        row = per_model.setdefault(model, {"model": model, "experiments": 0, "input_tokens": 0,
                                           "output_tokens": 0, "cost_usd": 0.0})
        for target in (totals, row):
            target["experiments"] += 1
            for key in ("input_tokens", "output_tokens"):
                target[key] += int(agent.get(key) or 0)
            target["cost_usd"] += float(agent.get("cost_usd") or 0.0)
    return {**totals, "models": sorted(per_model.values(), key=lambda r: -r["cost_usd"])}


def runs_frame(trials: list[dict[str, Any]], device_seconds: Mapping[int, float],
               experiments: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per finished run of a search, in finish order: its number within its rung ("run"), its role
    (baseline, null, candidate), the compute spent so far (device-hours, as Store.device_seconds counts them,
    summed in finish order over the whole search), the best decided improvement of its rung so far (views:
    `best_decided`), and who proposed it."""
    columns = ["run", "finished", "rung", "role", "experiment", "experiment_id", "proposer", "seed", "status",
               "val_bpb", "best_decided", "compute_hours"]
    rows, per_rung, hours = [], {}, 0.0
    for trial in trials:
        hours += device_seconds.get(trial["run_id"], 0.0) / 3600.0
        per_rung[trial["rung"]] = per_rung.get(trial["rung"], 0) + 1
        experiment = experiments.get(trial["experiment_id"], {})
        rows.append({"run": per_rung[trial["rung"]], "finished": trial["finished_at"], "rung": trial["rung"],
                     "role": trial["role"], "experiment": experiment.get("name", trial["experiment_id"]),
                     "experiment_id": trial["experiment_id"], "proposer": experiment.get("proposer", MISSING),
                     "seed": trial["seed"], "status": trial["status"], "val_bpb": trial["val_bpb"],
                     "best_decided": trial["best_decided"], "compute_hours": hours})
    return pd.DataFrame(rows, columns=columns)


def baseline_bands(runs: pd.DataFrame) -> pd.DataFrame:
    """Per rung, the baseline's mean val_bpb and its spread over seeds (mean +- one standard deviation; the mean
    alone with one seed), from the ok runs of role baseline."""
    base = runs[(runs["role"] == "baseline") & (runs["status"] == "ok")].dropna(subset=["val_bpb"])
    rows = []
    for rung, group in base.groupby("rung", sort=False):
        mean, sd = float(group["val_bpb"].mean()), float(group["val_bpb"].std()) if len(group) > 1 else 0.0
        rows.append({"rung": rung, "baseline": mean, "low": mean - sd, "high": mean + sd, "seeds": len(group)})
    return pd.DataFrame(rows, columns=["rung", "baseline", "low", "high", "seeds"])


def running_table(runs: list[dict[str, Any]], names: Mapping[str, str], now: datetime) -> pd.DataFrame:
    """The runs in progress, oldest first, with what their live progress says so far (the search records it from
    each job's progress.json): step, val_bpb at the last evaluation, tok/s, and how long since they started."""
    return pd.DataFrame([{
        "experiment": names.get(r["experiment_id"], r["experiment_id"]), "rung": r["rung"], "seed": r["seed"],
        "step": r.get("steps"), "val_bpb so far": r.get("val_bpb"), "tok/s": r.get("tok_per_s"),
        "running for": duration((now - r["started_at"]).total_seconds()) if r.get("started_at") else MISSING,
        "experiment_id": r["experiment_id"],
    } for r in sorted(runs, key=lambda r: r["id"])],
        columns=["experiment", "rung", "seed", "step", "val_bpb so far", "tok/s", "running for", "experiment_id"])


NO_REASON = "decided before reasons were recorded: see the numbers"


def chat_eval_table(details: Mapping[str, Any]) -> pd.DataFrame:
    """A chat model's fine-tuning evaluation (model.sft's chat_eval.json): per task, correct of n and the accuracy."""
    tasks = details.get("tasks") if isinstance(details, Mapping) else None
    return pd.DataFrame([{"task": name, "correct": t.get("correct"), "n": t.get("n"), "accuracy": t.get("accuracy")}
                         for name, t in (tasks or {}).items() if isinstance(t, Mapping)],
                        columns=["task", "correct", "n", "accuracy"])


def sentence(text: str) -> str:
    """`text` with its first letter capitalised (and nothing else changed: p=0.96, MDE and ids keep their case)."""
    return text[:1].upper() + text[1:]


def verdict_words(d: Mapping[str, Any]) -> str:
    if d["verdict"] == "promote":
        return f"promoted to {d['to_rung']}" if d.get("to_rung") else "passed"
    return {"reject": "rejected", "more_seeds": "one more seed"}.get(d["verdict"], d["verdict"])


def decision_reasons(decisions: list[dict[str, Any]], names: Mapping[str, str]) -> pd.DataFrame:
    """Every ladder decision in words: what was decided at which rung and why (the sentence the search printed);
    the statistics are in `decisions_table`."""
    return pd.DataFrame([{
        "experiment": names.get(d["experiment_id"], d["experiment_id"]), "rung": d["from_rung"],
        "decision": verdict_words(d), "why": d.get("reason") or NO_REASON, "experiment_id": d["experiment_id"],
    } for d in decisions], columns=["experiment", "rung", "decision", "why", "experiment_id"])


def decisions_table(decisions: list[dict[str, Any]], names: Mapping[str, str]) -> pd.DataFrame:
    """Every ladder decision with the statistics it was made on (numbers stay numbers: sortable)."""
    rows = []
    for d in decisions:
        deltas = d["deltas"]
        if isinstance(deltas, dict):
            deltas = [deltas[k] for k in sorted(deltas)]
        rows.append({
            "experiment": names.get(d["experiment_id"], d["experiment_id"]),
            "from": d["from_rung"], "to": d["to_rung"] or MISSING, "verdict": d["verdict"],
            "kind": d.get("kind") or MISSING,
            "n": d["n"], "mean delta": d["mean_delta"], "std error": d["std_error"], "p-value": d["p_value"],
            "MDE": d.get("mde"), "compute x": d.get("compute_multiplier"),
            "extrapolated": d.get("multiplier_extrapolated"),
            "alpha": d["alpha"], "min effect": d["min_effect"], "spread": d.get("spread"), "df": d.get("df"),
            "null spread": d["noise_floor"],
            "deltas": ", ".join(number(x) for x in deltas or []) or MISSING,
            "baseline": names.get(d["baseline_experiment_id"], d["baseline_experiment_id"]) or MISSING,
            "decided": d["created_at"], "experiment_id": d["experiment_id"],
        })
    return pd.DataFrame(rows)


def replications_table(replications: list[dict[str, Any]], names: Mapping[str, str]) -> pd.DataFrame:
    """Each promotion's estimate beside its re-estimate on the next rung's fresh runs (leaderboard.views.replications)."""
    def estimate(delta, se, n) -> str:
        if delta is None:
            return MISSING
        return f"{delta:+.4f}" + (f" ± {se:.4f}" if se is not None else "") + (f" (n={n})" if n is not None else "")
    return pd.DataFrame([{
        "experiment": names.get(r["experiment_id"], r["experiment_id"]),
        "promoted at": r["rung"], "estimate that promoted it": estimate(r["promoted_delta"], r["promoted_std_error"],
                                                                        r["promoted_n"]),
        "replicated at": r["next_rung"], "replication": estimate(r["replicated_delta"], r["replicated_std_error"],
                                                                 r["replicated_n"]),
        "replication verdict": r["replicated_verdict"] or "not yet decided",
        "kept": r["kept"], "experiment_id": r["experiment_id"],
    } for r in replications])


REPLICATION_HELP = ("A promotion is chosen because its estimate was good, so on average it was also lucky (the winner's "
                    "curse). The next rung measures the same change again on fresh runs: 'kept' is the share of the "
                    "promoted improvement they found (1 = all of it, 0 or less = none). The next rung is a larger "
                    "model, so a real effect may also grow or shrink with scale.")


def _ledger_rank(status: str) -> int:
    """Where a status comes in a ledger (schema.HYPOTHESIS_STATUSES: what the decisions settled first)."""
    return HYPOTHESIS_STATUSES.index(status) if status in HYPOTHESIS_STATUSES else len(HYPOTHESIS_STATUSES)


def hypothesis_counts(hypotheses: Iterable[Mapping[str, Any]]) -> str:
    """'1 supported, 1 refuted, 0 failed, ...': every status named, a zero included (none refuted is a finding)."""
    statuses = [h["status"] for h in hypotheses]
    return ", ".join(f"{statuses.count(status)} {status}" for status in HYPOTHESIS_STATUSES)


def ledger_table(hypotheses: list[dict[str, Any]], names: Mapping[str, str]) -> pd.DataFrame:
    """A search's hypotheses in ledger order (oldest first within a status), each with the numbers of the decision
    that judged it and the rule applied, in words (harness/hypotheses.py's `judge`)."""
    rows = []
    for h in sorted(hypotheses, key=lambda h: (_ledger_rank(h["status"]), h["id"])):
        evidence = h.get("evidence") or {}
        rows.append({
            "#": h["id"], "status": h["status"], "experiment": names.get(h["experiment_id"], h["experiment_id"]),
            "rung": evidence.get("rung") or MISSING, "mean delta": evidence.get("mean_delta"), "MDE": evidence.get("mde"),
            "compute x": evidence.get("compute_multiplier"), "rule": evidence.get("rule") or MISSING,
            "claim": h["statement"], "falsification": h.get("falsification") or MISSING,
            "experiment_id": h["experiment_id"],
        })
    # The verdict and its numbers before the long texts, so that a narrow table still shows them.
    return pd.DataFrame(rows, columns=["#", "status", "experiment", "rung", "mean delta", "MDE", "compute x", "rule",
                                       "claim", "falsification", "experiment_id"])


def insight_citations(insight: Mapping[str, Any], hypotheses: Mapping[int, Mapping[str, Any]],
                      names: Mapping[str, str]) -> str:
    """'cites #3 smear (supported), #5 ...': the hypotheses behind an insight, by the ids the ledger shows (one not
    among `hypotheses` by its id alone)."""
    cited = []
    for hid in insight.get("hypothesis_ids") or []:
        h = hypotheses.get(hid)
        cited.append(f"#{hid} {names.get(h['experiment_id'], h['experiment_id'])} ({h['status']})" if h else f"#{hid}")
    return f"cites {', '.join(cited)}" if cited else "cites no hypothesis"


# How the decision tables (Search and Experiment pages) show the ladder's statistics.
def decision_column_config(st) -> dict:
    return {
        "kind": st.column_config.TextColumn(help="parametric (a continuous setting) or structural (a switch, pattern, "
                                            "algorithm or patch): which noise the change was judged against"),
        "mean delta": st.column_config.NumberColumn(format="%.4f", help="candidate - baseline val_bpb (negative: better)"),
        "std error": st.column_config.NumberColumn(format="%.4f"),
        "p-value": st.column_config.NumberColumn(format="%.4f", help="one-sided moderated paired test of an improvement "
                                                 "beyond the min effect"),
        "MDE": st.column_config.NumberColumn(format="%.4f", help="minimum detectable effect: the improvement (bpb) this "
                                             "test promotes with 80% power at its seeds, alpha and spread"),
        "compute x": st.column_config.NumberColumn(format="%.3g", help="how much more training compute the baseline "
                                                   "needs to reach the candidate's val_bpb (above 1: the candidate "
                                                   "is better)"),
        "extrapolated": st.column_config.CheckboxColumn(help="the candidate's val_bpb lies past the baseline's "
                                                        "learning curve: the multiplier extends its last segment"),
        "min effect": st.column_config.NumberColumn(format="%.4f"),
        "spread": st.column_config.NumberColumn(format="%.5f", help="the sd of paired differences the test used: the "
                                                "candidate's own, moderated by the rung's other units of its kind"),
        "df": st.column_config.NumberColumn(format="%.1f", help="degrees of freedom of that spread"),
        "null spread": st.column_config.NumberColumn(format="%.5f", help="RMS of paired null differences of the "
                                                     "change's kind at the rung: the least spread a decision assumes"),
    }


# ------------------------------------------------------------------------------------------------ runs

def run_label(run: Mapping[str, Any], names: Mapping[str, str]) -> str:
    name = names.get(run["experiment_id"], run["experiment_id"])
    return f"#{run['id']} {name} · {run['rung']} · seed {run['seed']} · {run['status']}"


CURVE_AXES = {"step": "step", "tokens": "tokens", "training time (s)": "elapsed_train_s"}


def curves_frame(points: list[dict[str, Any]], labels: Mapping[int, str], axis: str) -> pd.DataFrame:
    """Long-form val_bpb curves (x, val_bpb, run) for the chosen x axis; points without the x value or
    without a val_bpb (train-only logging steps) are left out rather than drawn at 0."""
    column = CURVE_AXES[axis]
    rows = [{axis: p[column], "val_bpb": p["val_bpb"], "run": labels.get(p["run_id"], str(p["run_id"]))}
            for p in points if _finite(p.get(column)) and _finite(p.get("val_bpb"))]
    return pd.DataFrame(rows, columns=[axis, "val_bpb", "run"])


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"depth": 4}} -> {"model.depth": 4}; lists and scalars are leaves."""
    if not isinstance(config, Mapping):
        return {prefix: config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


_ABSENT = object()  # a key one config has and the other lacks differs even from an explicit null


def json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if value is not None else MISSING


def config_diff(config: Any, baseline: Any) -> pd.DataFrame:
    """The flattened keys whose values differ (or exist on one side only), sorted by key; values as JSON
    text so a column can hold numbers, strings and lists together."""
    ours, theirs = flatten(config or {}), flatten(baseline or {})
    keys = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k, _ABSENT) != theirs.get(k, _ABSENT))
    return pd.DataFrame([{"key": k, "baseline": json_text(theirs.get(k)), "run": json_text(ours.get(k))} for k in keys],
                        columns=["key", "baseline", "run"])



def rung_key(rung: str) -> tuple:
    """Natural order of rung names: d2 < d4 < d12 (as text, d12 would sort first)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", rung))


def runs_table(runs: list[dict[str, Any]], names: Mapping[str, str], rung_order: list[str] | None = None) -> pd.DataFrame:
    """Runs by rung (ladder order when known, else natural order of the names) and seed, with their results."""
    order = {rung: i for i, rung in enumerate(rung_order or [])}
    ordered = sorted(runs, key=lambda r: (order.get(r["rung"], len(order)), rung_key(r["rung"]), r["seed"], r["id"]))
    return pd.DataFrame([{
        "run": r["id"], "experiment": names.get(r["experiment_id"], r["experiment_id"]), "rung": r["rung"],
        "seed": r["seed"], "status": r["status"], "val_bpb": r["val_bpb"], "core": r["core"],
        "time to target (s)": r["time_to_target"], "training time (s)": r["total_training_time"],
        "steps": r.get("steps"), "tok/s": r.get("tok_per_s"), "loaded": r.get("loaded"),
        "reported val_bpb": sealed.get("reported_val_bpb"), "sealed": sealing(sealed),
        "reason": r.get("reason") or "",
    } for r in ordered for sealed in [r.get("sealed") if isinstance(r.get("sealed"), dict) else {}]],
        columns=["run", "experiment", "rung", "seed", "status", "val_bpb", "core", "time to target (s)",
                 "training time (s)", "steps", "tok/s", "loaded", "reported val_bpb", "sealed", "reason"])


def comparison_baseline(experiment: Mapping[str, Any]) -> str | None:
    """What an experiment is compared with: the baseline its latest decision used, else its parent; None for a
    baseline (it has neither)."""
    for d in reversed(experiment.get("decisions") or []):
        if d.get("baseline_experiment_id") and d["baseline_experiment_id"] != experiment["id"]:
            return d["baseline_experiment_id"]
    return experiment.get("parent_id")


def paired_runs(candidate: list[dict[str, Any]], baseline: list[dict[str, Any]], rung: str) -> pd.DataFrame:
    """The candidate's and the baseline's runs at one rung side by side, paired by seed (the same data order
    and init: the pairs the ladder's test compares), with the delta and each run's steps and tok/s, so that a
    run that trained fewer steps or ran loaded shows as such. The latest run of a seed counts."""
    def by_seed(runs):
        return {r["seed"]: r for r in sorted(runs, key=lambda r: r["id"]) if r["rung"] == rung}
    cand, base = by_seed(candidate), by_seed(baseline)
    rows = []
    for seed in sorted(set(cand) | set(base)):
        c, b = cand.get(seed, {}), base.get(seed, {})
        cv = c.get("val_bpb") if c.get("status") == "ok" else None
        bv = b.get("val_bpb") if b.get("status") == "ok" else None
        rows.append({"seed": seed, "baseline val_bpb": bv, "candidate val_bpb": cv,
                     "delta": cv - bv if cv is not None and bv is not None else None,
                     "baseline steps": b.get("steps"), "candidate steps": c.get("steps"),
                     "same steps": (b.get("steps") == c.get("steps")) if b.get("steps") and c.get("steps") else None,
                     "baseline tok/s": b.get("tok_per_s"), "candidate tok/s": c.get("tok_per_s"),
                     "status": " / ".join(filter(None, [b.get("status") and f"baseline {b['status']}",
                                                        c.get("status") and f"candidate {c['status']}"]))})
    return pd.DataFrame(rows, columns=["seed", "baseline val_bpb", "candidate val_bpb", "delta", "baseline steps",
                                       "candidate steps", "same steps", "baseline tok/s", "candidate tok/s", "status"])


def arm_curves(points: list[dict[str, Any]], arm_of: Mapping[int, tuple[str, int]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-seed curves, mean +- band per arm): val_bpb against step for the runs in `arm_of` (run id -> (arm, seed)).
    The band is one standard deviation over the arm's seeds at each step all of them evaluated (W&B's grouping)."""
    rows = [{"arm": arm_of[p["run_id"]][0], "seed": arm_of[p["run_id"]][1], "step": p["step"], "val_bpb": p["val_bpb"]}
            for p in points if p["run_id"] in arm_of and p.get("val_bpb") is not None]
    seeds = pd.DataFrame(rows, columns=["arm", "seed", "step", "val_bpb"])
    seeds["line"] = seeds["arm"] + " seed " + seeds["seed"].astype(str)
    grouped = seeds.groupby(["arm", "step"])["val_bpb"]
    band = grouped.agg(["mean", "std", "count"]).reset_index()
    band["std"] = band["std"].fillna(0.0)
    band["low"], band["high"] = band["mean"] - band["std"], band["mean"] + band["std"]
    return seeds, band.rename(columns={"count": "seeds"})[["arm", "step", "mean", "low", "high", "seeds"]]


def sealing(sealed: dict[str, Any]) -> str:
    """How a run was scored: by the sealed evaluator (a patched run; sandboxed or not), or "" (the checkout's code)."""
    if not sealed:
        return ""
    if "error" in sealed:
        return "not re-scored"
    return "sealed, sandboxed" if sealed.get("sandboxed") else "sealed, no sandbox"


def null_spreads_table(spreads: list[dict[str, Any]], rung_order: list[str] | None = None) -> pd.DataFrame:
    """A search's measured null spread per rung and kind of change."""
    order = {rung: i for i, rung in enumerate(rung_order or [])}
    rows = sorted(spreads, key=lambda r: (order.get(r["rung"], len(order)), rung_key(r["rung"]), r["kind"]))
    return pd.DataFrame([{"rung": r["rung"], "kind": r["kind"], "null spread": r["std"], "pairs": r["n"],
                          "measured": r["updated_at"]} for r in rows],
                        columns=["rung", "kind", "null spread", "pairs", "measured"])


# What run tables say about their columns: a compute-budgeted result stands on a loaded machine (its speed does not);
# a patched run's val_bpb is its sealed re-score.
RUN_COLUMN_HELP = {
    "reported val_bpb": "a patched run: the val_bpb its own code reported (val_bpb is the sealed re-score from its logits)",
    "tok/s": "training throughput over the timed steps",
    "loaded": "trained below half its rung's calibrated throughput: a loaded or slower machine",
}


# ------------------------------------------------------------------------------------------------ benchmark reports
# (harness/benchmark.py writes benchmark.json; the Benchmark page shows it)

def benchmark_truth_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """Each change of the pool: what it was planted as, what its truth runs measured."""
    return pd.DataFrame([{
        "change": t["name"], "planted": t["planted"], "measured": t["label"],
        "true effect (bpb)": (mean_std(t["effect"], t["std_error"]) if t["effect"] is not None
                              else "not run: a null by construction"),
        "seeds": t["n"] or None} for t in report.get("truth", [])])


def benchmark_summary_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """One row per proposer and rule (the report's summary): promotions true and false, compute to the first win."""
    rows = []
    for r in report.get("summary", []):
        rows.append({
            "proposer": r["proposer"], "rule": r["rule"], "searches": r["searches"],
            "true promotions": round(r["true_promotions"], 2), "false promotions": round(r["false_promotions"], 2),
            "nulls adopted": f"{r['nulls_adopted']}/{r['nulls_proposed']}",
            "false at 1st rung": round(r["false_first"], 2), "missed wins": round(r["missed"], 2),
            "untried": round(r["untried"], 2), "compute (h)": round(r["compute_h"], 3),
            "first true win (h)": (f"{r['first_win_h']:.3g} ({r['wins']}/{r['searches']})"
                                   if r["first_win_h"] is not None else f"{MISSING} (0/{r['searches']})"),
            "top-rung d": number(r["top_improvement"])})
    return pd.DataFrame(rows)


def discovery_frame(report: Mapping[str, Any], rule: str) -> pd.DataFrame:
    """The discovery curves of one rule: per search, (compute, best true improvement adopted so far), from (0, 0)."""
    rows = []
    for s in report.get("scores", []):
        if s["rule"] != rule:
            continue
        for step, (hours, best) in enumerate([(0.0, 0.0), *s["curve"]]):
            rows.append({"search": s["search"], "proposer": s["proposer"], "proposal": step,
                         "compute (h)": hours, "true improvement (bpb)": -best})
    return pd.DataFrame(rows)


def benchmark_outcomes_table(report: Mapping[str, Any], rule: str) -> pd.DataFrame:
    """What one rule did with each change in each search, with the change's measured truth."""
    truth = {t["name"]: t["label"] for t in report.get("truth", [])}
    return pd.DataFrame([{"search": s["search"], "order": i + 1, "change": name, "truth": truth.get(name, MISSING),
                          "outcome": s["outcomes"].get(name, MISSING)}
                         for s in report.get("scores", []) if s["rule"] == rule for i, name in enumerate(s["proposed"])])
