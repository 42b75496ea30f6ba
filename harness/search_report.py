"""What a search reports when it ends: the summary table (baselines, null spreads and MDEs per rung, each candidate's
furthest rung and statistics, promotions, the best by the one definition of best, what to submit as a speedrun),
and for an A/A search its false-promotion rates, also over several independent controls. Each function reads a
finished (or stopped) `harness.search.Search`; none changes it."""

from __future__ import annotations

import math
import shlex
import statistics

from experiments.catalog import Rung
from harness.noise import CONTROL_INITS, mde, per_look_alpha
from leaderboard import views
from leaderboard.schema import HYPOTHESIS_STATUSES
from search_spaces import KINDS


def rung_mde(search, rung: Rung, kind: str, n: int) -> float | None:
    """The minimum detectable effect at a rung for a change of `kind` with n seeds, from what the rung has
    measured: the spread the test would use for a candidate as noisy as the kind's typical unit."""
    null = search.null_spread(rung, kind)
    prior = search.prior(rung, kind)
    stats = search.tier.statistics
    if prior is not None:
        sd, df = math.sqrt(prior.var), min(prior.df + n - 1, prior.pooled_df + n - 1)
    elif null is not None:
        sd, df = null.sd, n - 1
    else:
        return None
    if null is not None and null.sd > sd:
        sd, df = null.sd, max(df, null.df)
    alpha = per_look_alpha(stats.alpha, rung.seeds, stats.max_seeds, stats.futility)
    return mde(sd, n, df, alpha, stats.power, stats.min_effect)


def replication_lines(search) -> list[str]:
    """Each promotion's estimate beside the next rung's re-estimate on fresh runs (the winner's curse, measured)."""
    lines = []
    for r in views.replications(search.store.decisions(search_id=search.search_id)):
        candidate = search.candidates.get(r["experiment_id"])
        if candidate is None or candidate.experiment.replica:
            continue
        def estimate(delta, se, n) -> str:
            return f"{delta:+.4f}" + (f" ± {se:.4f}" if se is not None else "") + f" (n={n})"
        again = (f"{estimate(r['replicated_delta'], r['replicated_std_error'], r['replicated_n'])}"
                 + (" so far" if r["replicated_verdict"] == "more_seeds" else "")
                 + (f": {r['kept']:.0%} of the promoted improvement kept" if r["kept"] is not None else "")
                 if r["replicated_delta"] is not None else "not measured yet")
        lines.append(f"  replication of {r['experiment_id']}: promoted at {r['rung']} on "
                     f"{estimate(r['promoted_delta'], r['promoted_std_error'], r['promoted_n'])}; at {r['next_rung']} "
                     f"{again}")
    return lines


def summary(search, status: str) -> str:
    stats = search.tier.statistics
    lines = [f"\nsearch {search.name!r} {status}: {search.proposals_made} proposals, "
             f"compute {search.compute_s / 3600:.3f} device-hours"
             + (f" ({search.reused} runs taken from other searches, untrained)" if search.reused else "")
             + f", database {search.store.url_text}"]
    for rung in search.tier.rungs:
        base = [search.val(r) for (e, n, _), r in search.results.items() if e == search.baseline.id and n == rung.name and search.status(r) == "ok"]
        if not base:
            continue
        lines.append(f"  baseline at {rung.name}: val_bpb {sum(base) / len(base):.4f} over {len(base)} seeds")
        for kind in KINDS:
            null = search.spreads.get((rung.name, kind))
            if null is None:
                continue
            mdes = ", ".join(f"{n} seeds {m:.4f}" for n in sorted({rung.seeds, stats.max_seeds})
                             if (m := rung_mde(search, rung, kind, n)) is not None)
            lines.append(f"    {kind:10} null spread {null.sd:.5f} ({int(null.df)} pairs); MDE at {stats.power:.0%} power: {mdes}")
    lines.append(f"  {'experiment':12} {'kind':10} {'furthest':8} {'state':8} {'mean d':>8} {'p':>6} {'MDE':>7} "
                 f"{'compute':>9}  change")
    for c in sorted(search.candidates.values(), key=lambda c: c.order):
        rung = search.tier.rungs[c.rung].name
        v = c.verdicts.get(rung) or next((c.verdicts[r.name] for r in reversed(search.tier.rungs) if r.name in c.verdicts), None)
        mean = f"{v.mean_delta:+.4f}" if v and v.mean_delta is not None else "-"
        p = f"{v.p_value:.2g}" if v and v.p_value is not None else "-"
        m = f"{v.mde:.4f}" if v and v.mde is not None and math.isfinite(v.mde) else "-"
        mult = (f"x{v.multiplier.value:.3g}" + ("*" if v.multiplier.extrapolated else "")
                if v and v.multiplier and v.multiplier.value is not None else "-")
        lines.append(f"  {c.experiment.id} {c.experiment.kind:10} {rung:8} {c.state:8} {mean:>8} {p:>6} {m:>7} "
                     f"{mult:>9}  {c.experiment.describe()}")
    lines.append("  (mean d: candidate - control val_bpb, negative is better; the control is the baseline at the same seed, "
                 "for a structural change the mean of the baseline and the structural null, two inits; MDE: the improvement the test promotes "
                 f"with {stats.power:.0%} power at the seeds it used; compute: baseline compute to reach the candidate's "
                 "val_bpb over the candidate's, * = extrapolated past the baseline's curve)")
    real = [c for c in search.candidates.values() if not c.experiment.replica]
    promoted = [c for c in real if c.rung > 0 or c.state == "passed"]
    lines.append(f"  promotions: {len(promoted)} of {len(real)}")
    lines += replication_lines(search)
    if real:
        lines += ledger_lines(search)
    best = search.best()
    if best:
        what = search.experiment_of(best.experiment_id).describe()
        if best.beats_baseline():
            cand = search.candidates.get(best.experiment_id)
            held = "" if cand is None or cand.rung > 0 or cand.state == "passed" else " (not promoted: within the noise there)"
            lines.append(f"  best: {best.experiment_id} ({what}), mean d {best.mean_delta:+.4f} at {best.rung}{held}")
        else:
            lines.append(f"  best: none beat the baseline (closest: {best.experiment_id}, {what}, mean d "
                         f"{best.mean_delta:+.4f} at {best.rung})")
    for c in real:
        if c.state == "passed" and len(search.tier.rungs) > 1:
            lines.append(f"  passed the ladder: {c.experiment.id}. Submit it as a speedrun:\n"
                         f"    python -m harness.speedrun --track {search.tier.track or search.tier.name} --experiment {c.experiment.id} --seeds 3")
    if any(c.experiment.replica for c in search.candidates.values()):
        lines.extend(aa_report(search))
    elif real and not promoted:
        lines.extend(what_next(search, real))
    lines.append(f"  dashboard: python -m leaderboard serve --db {search.store.url_text}")
    lines.append(f"  report card and results.tsv: python -m leaderboard export {shlex.quote(search.name)} --db "
                 f"{search.store.url_text}")
    return "\n".join(lines)


MOST_SEEDS = 64  # past this, more seeds is not advice: the effect is too small for this rung to see


def seeds_to_detect(sd: float, df: float, n: int, effect: float, alpha: float, power: float, floor: float) -> int | None:
    """The fewest seeds with which a change whose paired differences spread `sd` (measured with `df` degrees of
    freedom on n seeds) would be promoted, if its true improvement were `effect` bpb, with probability `power`;
    None when no count up to MOST_SEEDS would (an effect at or under the floor never is)."""
    for seeds in range(2, MOST_SEEDS + 1):
        if mde(sd, seeds, df + max(seeds - n, 0), alpha, power, floor) <= effect:
            return seeds
    return None


def ledger_lines(search) -> list[str]:
    """The hypothesis ledger counted by status, the course the search ended on, and the insights kept for the next
    search on the tier and space."""
    ledger = search.store.hypotheses(search_id=search.search_id)
    counts = {status: sum(h["status"] == status for h in ledger) for status in HYPOTHESIS_STATUSES}
    lines = ["  hypotheses: " + ", ".join(f"{n} {status}" for status, n in counts.items())
             + " (inconclusive: an effect smaller than its MDE, too small to see at those seeds)"]
    lines += [f"  {line}" for line in search.course.lines()]
    insights = search.store.insights(search.tier.name, search.space.name)
    if insights:
        lines.append(f"  insights kept for tier {search.tier.name}, space {search.space.name}: {len(insights)} "
                     "(the next search there starts from them; edit or retire them on the dashboard's Search page)")
    return lines


def what_next(search, real: list) -> list[str]:
    """For a search that promoted nothing: what its first rung could detect, the largest improvement it saw, and
    what would let it conclude about an effect of that size (more seeds, a longer rung, other changes)."""
    rung, stats = search.tier.rungs[0], search.tier.statistics
    seen = [(v, c) for c in real if (v := c.verdicts.get(rung.name)) and v.mean_delta is not None]
    lines = [f"  what next: none of the {len(real)} changes passed {rung.name}."]
    if not seen:
        return lines + ["    none was decided there yet: rerun the same command to resume it, or give it more --trials"]
    v, closest = min(seen, key=lambda x: x[0].mean_delta)
    name = f"{closest.experiment.id} ({closest.experiment.describe()})"
    if v.mean_delta >= 0:
        return lines + [f"    No change improved on the baseline even on average (closest: {name}, {v.mean_delta:+.4f}): "
                        "try other changes (--space, more --trials)."]
    could = (f"with its {v.n} seeds the test could detect {v.mde:.4f} bpb with {stats.power:.0%} power"
             if v.mde is not None and math.isfinite(v.mde) else "its noise could not be measured")
    lines.append(f"    The best change seen, {name}, measured {v.mean_delta:+.4f}; {could}.")
    test = v.test
    need = None
    if test is not None and test.sd:
        alpha = per_look_alpha(stats.alpha, rung.seeds, stats.max_seeds, stats.futility)
        need = seeds_to_detect(test.sd, test.df, v.n, -v.mean_delta, alpha, stats.power, stats.min_effect)
    if need is None:
        lines.append(f"    An improvement that small is under what {rung.name} can resolve (floor {stats.min_effect} bpb): "
                     "more seeds will not settle it. Look for larger effects, or try a longer first rung "
                     "(--flops-budget), which helps if the effect grows with training faster than seed noise does.")
    else:
        lines.append(f"    To settle an effect that size: about {need} seeds per rung (--seeds {need}), or a longer first "
                     "rung (--flops-budget), which helps if the effect grows with training faster than seed noise does.")
    return lines


def aa_outcome(search, kind: str) -> tuple[int, int]:
    """(promoted, decided): how many of the search's A/A nulls of `kind` the first rung promoted, of those it
    decided."""
    nulls = [c for c in search.candidates.values() if c.experiment.null_kind == kind]
    decided = [c for c in nulls if c.state != "active" or c.rung > 0]
    return sum(1 for c in decided if c.rung > 0 or c.state == "passed"), len(decided)


def aa_report(search) -> list[str]:
    """The false-promotion rate per kind of null, with its one-sided 95% upper confidence bound."""
    first = search.tier.rungs[0].name
    lines = [f"  A/A calibration at {first} (alpha {search.tier.statistics.alpha}, min effect "
             f"{search.tier.statistics.min_effect}, up to {search.tier.statistics.max_seeds} seeds, seeds from {search.seed_base}):"]
    for kind in KINDS:
        if not any(c.experiment.null_kind == kind for c in search.candidates.values()):
            continue
        k, n = aa_outcome(search, kind)
        rate = k / n if n else float("nan")
        lines.append(f"    {kind:10} {k} of {n} null proposals promoted: false-promotion rate {rate:.2f} "
                     f"(95% upper bound {upper_bound(k, n):.2f})")
    offset = control_offset(search, search.tier.rungs[0])
    if offset is not None:
        value, z, slots = offset
        lines.append(f"    the structural control sits {value:+.4f} bpb from the mean of the structural nulls' own inits on "
                     f"its first {slots} slots (z = {z:+.1f}). Every structural null here is judged against that one "
                     "control, so their outcomes are not independent and the bound above, which assumes they are, is "
                     "too narrow; a control drawn high (z > 0) promotes more of them. --aa-controls spreads the nulls "
                     "over independent controls.")
    return lines


def control_offset(search, rung: Rung) -> tuple[float, float, int] | None:
    """(offset, z, slots): how far the structural control of the rung's first slots sits from the mean of the A/A
    structural nulls' runs there (each null is another init of the baseline recipe), in bpb and in standard
    errors of that difference (the control's k inits and the nulls' m inits per slot, from the nulls' spread).
    None without two nulls' runs on a slot."""
    nulls = [c.experiment for c in search.candidates.values() if c.experiment.null_kind == "structural"]
    if not nulls:
        return None
    k = CONTROL_INITS["structural"]
    offsets, variances = [], []
    for slot in range(rung.seeds):
        inits = [search.val(r) for null in nulls if search.status(r := search.result(null, rung, slot)) == "ok"]
        control = search.control_values(nulls[0], rung, [slot])
        if len(inits) < 2 or slot not in control:
            continue
        offsets.append(control[slot] - statistics.fmean(inits))
        variances.append(statistics.variance(inits) * (1 / k + 1 / len(inits)))
    if not offsets or not any(variances):
        return None
    value = statistics.fmean(offsets)
    return value, value / math.sqrt(sum(variances) / len(offsets) ** 2), len(offsets)


def upper_bound(k: int, n: int) -> float:
    """The one-sided 95% upper confidence bound on a rate seen k times in n independent trials (Clopper-Pearson)."""
    from scipy import stats as scipy_stats
    if not n:
        return float("nan")
    return 1.0 if k >= n else float(scipy_stats.beta.ppf(0.95, k + 1, n - k))


def aa_report_over_controls(searches: list) -> str:
    """The false-promotion rate of each kind over A/A searches that each have a control of their own (--aa-controls).
    Two bounds: one that takes every null as independent (too narrow if nulls sharing a control move together), and
    one from the controls alone: the fraction of controls with at least one promotion is at least any one null's
    chance of promotion, and the controls are independent, so its bound holds whatever the nulls of one control do."""
    first, stats = searches[0].tier.rungs[0].name, searches[0].tier.statistics
    bases = ", ".join(str(s.seed_base) for s in searches)
    lines = [f"\nA/A calibration over {len(searches)} independent controls at {first} (seed bases {bases}; alpha "
             f"{stats.alpha}, min effect {stats.min_effect}, up to {stats.max_seeds} seeds):"]
    for kind in KINDS:
        outcomes = [aa_outcome(s, kind) for s in searches]
        k, n = sum(o[0] for o in outcomes), sum(o[1] for o in outcomes)
        if not n:
            continue
        hit, controls = sum(1 for o in outcomes if o[0]), sum(1 for o in outcomes if o[1])
        per_control = " ".join(f"{a}/{b}" for a, b in outcomes)
        lines.append(f"  {kind:10} {k} of {n} null proposals promoted (per control: {per_control}): false-promotion rate "
                     f"{k / n:.2f}; 95% upper bound {upper_bound(k, n):.2f} taking the nulls as independent, "
                     f"{upper_bound(hit, controls):.2f} from the controls alone ({hit} of {controls} promoted any)")
    return "\n".join(lines)
