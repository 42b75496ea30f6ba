"""
The hypothesis ledger: what each proposal claimed, and what its decisions made of the claim.

A proposal with a rationale claims that its change lowers val_bpb, and (from the agent) states the result that would
show it wrong. The search records that claim when the proposal becomes an experiment (`Store.record_hypothesis`) and
judges it whenever the ladder decides the experiment (`judge`): the last decision that was not "one more seed" says

- supported:    promoted (or passed the top rung) at that rung;
- failed:       a candidate run failed, so the change was never measured;
- inconclusive: rejected, with a mean paired difference smaller in size than the decision's minimum detectable
                effect: too small to see at those seeds, not shown to be worse; also rejected as better, but by
                less than the tier's minimum effect or not significantly; or a no-op there (its runs are the
                baseline's, bit for bit);
- refuted:      rejected with a difference of at least the MDE in the wrong direction: worse, beyond what its
                seeds can miss.

Each judgement keeps its numbers (rung, mean delta, MDE, p, n, compute multiplier) and the rule applied in words.
`informative_first` orders a ledger for the agent: what was decided with the largest effect relative to its MDE
first, pending last.
"""

from __future__ import annotations

import math

from harness.ladder import CANDIDATE_FAILED
from leaderboard.schema import HYPOTHESIS_STATUSES

NO_OP = "identical to the baseline"  # harness/search.py's reason for a change whose runs are the baseline's


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def judge(decisions: list[dict], rungs: list[str]) -> tuple[str, dict]:
    """(status, evidence) of an experiment's hypothesis from its decisions (oldest first)."""
    final = [d for d in decisions if d["verdict"] != "more_seeds" and d["from_rung"] in rungs]
    if not final:
        return "pending", {}
    d = final[-1]
    mean, mde = d.get("mean_delta"), d.get("mde")
    evidence = {"rung": d["from_rung"], "rung_index": rungs.index(d["from_rung"]), "verdict": d["verdict"],
                "mean_delta": mean, "mde": mde if _finite(mde) else None, "p_value": d.get("p_value"),
                "n": d.get("n"), "compute_multiplier": d.get("compute_multiplier"),
                "rungs_decided": list(dict.fromkeys(x["from_rung"] for x in final))}
    reason = d.get("reason") or ""
    where = f"at {d['from_rung']}"
    if d["verdict"] == "promote":
        status, rule = "supported", f"promoted {where}: mean delta {mean:+.4f} beat the baseline beyond noise"
    elif reason.startswith(NO_OP):
        status, rule = "inconclusive", f"a no-op {where}: its runs are the baseline's, bit for bit"
    elif reason.startswith(CANDIDATE_FAILED) or not _finite(mean):
        status, rule = "failed", f"not measured {where}: {reason or 'no paired difference'}"
    elif _finite(mde) and abs(mean) < mde:
        status, rule = "inconclusive", f"rejected {where}: |mean delta| {abs(mean):.4f} < MDE {mde:.4f}: too small to see"
    elif mean >= 0:
        status = "refuted"
        rule = f"rejected {where}: mean delta {mean:+.4f} is worse" + (f" by at least its MDE {mde:.4f}" if _finite(mde) else "")
    else:
        status, rule = "inconclusive", f"rejected {where}: mean delta {mean:+.4f} better, but not beyond noise and the minimum effect"
    evidence["rule"] = rule
    return status, evidence


def informative_first(rows: list[dict]) -> list[dict]:
    """Hypotheses ordered for a reader with little room: supported (furthest rung, largest gain first), refuted
    (most clearly worse first), failed, inconclusive (closest to detectable first), pending (newest first)."""
    def key(row: dict):
        ev = row.get("evidence") or {}
        mean, mde = ev.get("mean_delta"), ev.get("mde")
        size = abs(mean) / mde if _finite(mean) and _finite(mde) and mde > 0 else (abs(mean) if _finite(mean) else 0.0)
        order = HYPOTHESIS_STATUSES.index(row["status"])
        if row["status"] == "supported":
            return (order, -(ev.get("rung_index") or 0), mean if _finite(mean) else 0.0)
        if row["status"] == "pending":
            return (order, 0, -(row.get("id") or 0))
        return (order, 0, -size)
    return sorted(rows, key=key)
