"""A search, exported for people who were not watching: `results.tsv` and `report.md`, read from the database only.

- results.tsv: one row per experiment and rung it ran at (baseline, nulls, then the changes in the order they were
  proposed), with its runs, mean val_bpb and the last ladder decision there (mean paired difference, its standard
  error, seeds, p, MDE, compute multiplier, verdict and the reason in words). Tab-separated with a header, like
  autoresearch's results.tsv, so a spreadsheet, pandas or `column -t` reads it.
- report.md: one page in the manner of nanochat's report.md: what was searched and how, what it cost, what it found
  (the best change, promotions and their replications), every decision in words, every change's numbers, and what
  the search printed at its end (its "what next").

`python -m leaderboard export SEARCH [--db URL] [--out DIR]` writes both; the dashboard's Search page offers them as
downloads.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from leaderboard import views
from leaderboard.dashboard_format import verdict_words
from leaderboard.errors import LeaderboardError
from leaderboard.store import Store

RESULTS_COLUMNS = ("experiment", "role", "change", "rung", "runs", "ok", "val_bpb_mean", "val_bpb_std", "mean_d",
                   "std_error", "n", "p_value", "mde", "compute_x", "verdict", "reason")
ROLE_ORDER = {"baseline": 0, "null": 1, "candidate": 2}


class SearchExport:
    """What both files are made of: the search's rows, read once."""

    def __init__(self, store: Store, name: str):
        self.search = store.find_search(name)
        if self.search is None:
            known = ", ".join(repr(s["name"]) for s in store.searches()[:8]) or "none yet"
            raise LeaderboardError(f"search {name!r}: not in {store.url_text}; expected one of: {known}")
        search_id = self.search["id"]
        self.summary = views.search_summary(store, search_id)
        self.runs = store.runs(search_id=search_id)
        self.decisions = store.decisions(search_id=search_id)
        proposed = [x["id"] for x in store.experiments(search_id=search_id)]
        ran = {r["experiment_id"] for r in self.runs} | {d["experiment_id"] for d in self.decisions}
        self.experiments = {x["id"]: x for x in store.experiments_by_id(set(proposed) | ran)}
        self.baseline_id = views.search_baseline(self.search, self.decisions)
        self.order = [e for e in dict.fromkeys([*sorted(ran - set(proposed)), *proposed]) if e in self.experiments]
        self.order.sort(key=lambda e: ROLE_ORDER[self.role(e)])  # stable: proposal order within a role
        self.rungs = [f["rung"] for f in self.summary["funnel"]]

    def role(self, experiment_id: str) -> str:
        if experiment_id == self.baseline_id:
            return "baseline"
        return "null" if views.is_null(self.experiments[experiment_id]) else "candidate"

    def name(self, experiment_id: str | None) -> str:
        if experiment_id is None:
            return "—"
        return (self.experiments.get(experiment_id) or {}).get("name") or experiment_id

    def rows(self) -> list[dict[str, Any]]:
        """results.tsv's rows: each experiment at each rung where it ran or was decided, in ladder order."""
        last: dict[tuple[str, str], dict[str, Any]] = {}
        for d in self.decisions:  # oldest first: the last one at a rung is the one that stands
            last[(d["experiment_id"], d["from_rung"])] = d
        out = []
        for experiment_id in self.order:
            for rung in self.rungs:
                runs = [r for r in self.runs if r["experiment_id"] == experiment_id and r["rung"] == rung]
                d = last.get((experiment_id, rung), {})
                if not runs and not d:
                    continue
                values = [r["val_bpb"] for r in runs if r["status"] == "ok" and r["val_bpb"] is not None]
                mean = sum(values) / len(values) if values else None
                std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                       if len(values) > 1 else None)
                out.append({"experiment": experiment_id, "role": self.role(experiment_id),
                            "change": self.name(experiment_id), "rung": rung, "runs": len(runs),
                            "ok": sum(r["status"] == "ok" for r in runs), "val_bpb_mean": mean, "val_bpb_std": std,
                            "mean_d": d.get("mean_delta"), "std_error": d.get("std_error"), "n": d.get("n"),
                            "p_value": d.get("p_value"), "mde": d.get("mde"), "compute_x": d.get("compute_multiplier"),
                            "verdict": d.get("verdict"), "reason": d.get("reason")})
        return out


def results_tsv(export: SearchExport) -> str:
    """The rows as TSV: numbers in full precision, an empty cell for what was not measured."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(RESULTS_COLUMNS)
    for row in export.rows():
        writer.writerow(["" if row[c] is None else " ".join(str(row[c]).split()) for c in RESULTS_COLUMNS])
    return buffer.getvalue()


def cell(text: Any) -> str:
    """Text for a Markdown table cell: on one line, with the characters that would end the cell or start
    emphasis, a link or HTML escaped."""
    text = " ".join(str(text).split())
    for ch in "\\|*`<[]":
        text = text.replace(ch, "\\" + ch)
    return text


def code(text: str) -> str:
    """An id or a change as a code span (shown exactly; a | inside still ends a GFM table cell, so it is escaped)."""
    return "`" + str(text).replace("`", "'").replace("|", "\\|") + "`"


def signed(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:+.{digits}f}"


def plain(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def significant(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def report_card(export: SearchExport) -> str:
    s, summary = export.search, export.summary
    config = s["config"] if isinstance(s["config"], dict) else {}
    ok = summary["runs_by_status"].get("ok", 0)
    total = sum(summary["runs_by_status"].values())
    others = ", ".join(f"{n} {status}" for status, n in sorted(summary["runs_by_status"].items()) if status != "ok")
    when = f"started {s['started_at']:%Y-%m-%d %H:%M} UTC" + (
        f", ended {s['finished_at']:%Y-%m-%d %H:%M} UTC" if s["finished_at"] else "")
    lines = [f"# Search report: {cell(s['name'])}", "",
             f"{cell(s['status'])}, {when}; {summary['n_proposed']} proposals, {total} runs ({ok} ok"
             + (f", {cell(others)}" if others else "") + f"), compute {summary['device_hours']:.3f} device-hours "
             f"({summary['training_hours']:.3f} h of timed training).", ""]
    if s["reason"]:
        lines += [f"Why it ended: {cell(s['reason'])}", ""]

    lines += ["## Setup", ""]
    setup = [["tier", cell(s["tier"])], ["space", cell(s["space"])], ["proposer", cell(s["proposer"])],
             ["ladder", cell(" -> ".join(export.rungs))],
             ["baseline", code(export.baseline_id) if export.baseline_id else "—"],
             *([[key.replace("_", " "), cell(config[key])] for key in ("recipe", "seed_base", "trials", "budget_hours",
                                                                      "parallel", "executor", "data")
                if config.get(key) not in (None, "")])]
    lines += table(["", ""], setup) + [""]

    lines += ["## Outcome", ""]
    winners = [b for b in summary["best"] if b["beats_baseline"]]
    if winners:
        b = winners[0]
        verdicts = [d["verdict"] for d in export.decisions
                    if d["experiment_id"] == b["experiment_id"] and d["from_rung"] == b["rung"]]
        held = "" if verdicts and verdicts[-1] == "promote" else (
            " It was not promoted: the difference is within the noise at that rung.")
        lines.append(f"Best: {code(export.name(b['experiment_id']))} ({code(b['experiment_id'])}), mean paired "
                     f"difference {signed(b['mean_delta'])} bpb at {cell(b['rung'])} over {b['n'] or '—'} seeds "
                     f"(negative is better).{held}")
    elif summary["best"]:
        b = summary["best"][0]
        lines.append(f"Best: none beat the baseline; the closest was {code(export.name(b['experiment_id']))} "
                     f"({signed(b['mean_delta'])} bpb at {cell(b['rung'])}).")
    else:
        lines.append("Best: no change was decided.")
    lines += ["", *table(["rung", "proposed", "run", "promoted", "rejected"],
                         [[cell(f["rung"]), str(f["proposed"]), str(f["run"]), str(f["promoted"]), str(f["rejected"])]
                          for f in summary["funnel"]]), ""]
    if summary["replications"]:
        lines += ["Replications (each promotion measured again on the next rung's fresh runs; kept = share of the "
                  "improvement found again):", ""]
        lines += table(["change", "promoted at", "estimate", "replicated at", "replication", "kept"],
                       [[code(export.name(r["experiment_id"])), cell(r["rung"]), signed(r["promoted_delta"]),
                         cell(r["next_rung"]), signed(r["replicated_delta"]),
                         plain(r["kept"], 2)] for r in summary["replications"]]) + [""]

    decided = [d for d in export.decisions if d["verdict"] != "more_seeds"]
    lines += ["## Decisions", "", "Every decision of the ladder (more-seed looks left out), in the order made, with "
              "the reason the search gave.", ""]
    lines += table(["change", "rung", "decision", "why"],
                   [[code(export.name(d["experiment_id"])), cell(d["from_rung"]), cell(verdict_words(d)),
                     cell(d.get("reason") or "—")] for d in decided]) + [""]

    lines += ["## Every experiment", "",
              "Mean d: candidate - baseline val_bpb on the same seeds (negative is better); MDE: the improvement the "
              "test detects with its power at those seeds; all rows are in results.tsv.", ""]
    lines += table(["experiment", "role", "change", "rung", "runs ok", "val_bpb", "mean d", "p", "MDE", "verdict"],
                   [[code(r["experiment"]), r["role"], code(r["change"]), cell(r["rung"]), f"{r['ok']}/{r['runs']}",
                     plain(r["val_bpb_mean"]), signed(r["mean_d"]), significant(r["p_value"]), plain(r["mde"]),
                     cell(r["verdict"] or "—")] for r in export.rows()]) + [""]

    if s.get("summary"):
        lines += ["## What the search printed at its end", "", "```text", s["summary"].strip("\n").replace("```", "'''"),
                  "```", ""]
    return "\n".join(lines)


def export_search(store: Store, name: str, out: Path) -> list[Path]:
    """Write OUT/results.tsv and OUT/report.md for the search; the paths written."""
    export = SearchExport(store, name)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in (("results.tsv", results_tsv(export)), ("report.md", report_card(export))):
        path = out / filename
        path.write_text(text)
        written.append(path)
    return written
