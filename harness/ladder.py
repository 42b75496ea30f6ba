"""
Promotion on the depth ladder: a candidate moves up a rung only when it beats the baseline beyond noise.

At each rung the baseline and the candidate run on the same seed slots (same init seed and data order: the
paired design), and the decision looks at the per-slot differences d = val_bpb(candidate) - val_bpb(baseline)
(negative = better):

- H0: mean(d) >= -min_effect (no improvement of at least min_effect); H1: mean(d) < -min_effect.
- A one-sided moderated paired t-test (harness/noise.py): the candidate's own paired spread, shrunk towards what
  the rung has measured for changes of its kind (its null and the other candidates of that kind) by empirical
  Bayes, and never below the kind's null spread. With nothing to pool it is the plain paired t-test.
- promote when p < the per-look alpha; reject when p > futility (the estimate is not even an improvement of
  min_effect) or any candidate run failed; otherwise the result is borderline: add a seed (to both) and decide
  again, up to max_seeds, then reject. The tier's alpha is the false-promotion rate of this whole sequence of
  looks, so each look tests at the lower level that holds it there (harness/noise.py, `per_look_alpha`).

Each verdict carries its minimum detectable effect (the improvement this test would promote with the tier's
power, 80%, at the seeds it used) so a rejection says what it could not have seen.

`python -m harness.search --aa N` measures how often this procedure promotes a change that does nothing, per kind.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from experiments.catalog import Statistics
from harness.compute_multiplier import ComputeMultiplier
from harness.noise import PairedTest, Prior, Spread, paired_test, per_look_alpha

CANDIDATE_FAILED = "a candidate run failed"  # how a decision's reason starts when a candidate run failed


@dataclass
class Verdict:
    verdict: str                    # promote | reject | more_seeds
    deltas: dict[int, float]        # seed slot -> candidate - baseline
    mean_delta: float | None
    std_error: float | None
    p_value: float | None
    n: int
    reason: str
    kind: str | None = None         # parametric | structural: which noise it was judged against
    test: PairedTest | None = None  # the spread, degrees of freedom and MDE behind the p-value
    multiplier: ComputeMultiplier | None = field(default=None)
    alpha: float | None = None      # the level this look tested at

    @property
    def mde(self) -> float | None:
        return self.test.mde if self.test else None


def decide(candidate: dict[int, float | None], baseline: dict[int, float], stats: Statistics, *,
           first_n: int | None = None, kind: str | None = None, null: Spread | None = None, prior: Prior | None = None,
           failed: str | None = None) -> Verdict:
    """The ladder's decision for one candidate at one rung. `candidate` and `baseline` map seed slots to final
    val_bpb; `first_n` is the rung's seed count (its first look; None: a single look at max_seeds); `null` is the
    null spread of the candidate's kind at the rung and `prior` what the rung's other units of that kind say about
    its spread (either may be None); `failed` is the failure of a candidate run, if any (the candidate is then
    rejected)."""
    alpha = per_look_alpha(stats.alpha, first_n or stats.max_seeds, stats.max_seeds, stats.futility)
    slots = sorted(s for s in candidate if s in baseline and candidate[s] is not None)
    deltas = {s: candidate[s] - baseline[s] for s in slots}
    if failed:
        mean = statistics.fmean(deltas.values()) if deltas else None
        return Verdict("reject", deltas, mean, None, None, len(deltas), f"{CANDIDATE_FAILED}: {failed}", kind,
                       alpha=alpha)
    if not deltas:
        return Verdict("more_seeds", deltas, None, None, None, 0, "no paired results yet", kind, alpha=alpha)
    test = paired_test(list(deltas.values()), stats.min_effect, alpha, null=null, prior=prior, power=stats.power)
    n, p = len(deltas), test.p_value

    def verdict(what: str, reason: str) -> Verdict:
        return Verdict(what, deltas, test.mean, test.std_error, p, n, reason, kind, test, alpha=alpha)

    # The reasons are sentences a user reads on the dashboard and in the terminal: what was seen, then the rule.
    seen = f"{test.mean:+.4f} bpb vs the baseline on {n} seed{'s' if n != 1 else ''}"
    if p is None:
        if n < stats.max_seeds:
            return verdict("more_seeds", f"undecided: {seen}, and no noise measured yet to judge it by; adding a seed")
        return verdict("reject", f"not shown better: {seen}, with no spread to judge it by at the seed cap")
    if p < alpha:
        return verdict("promote", f"better than the baseline beyond the {stats.min_effect} bpb floor: {seen}, p={p:.3g} < {alpha:.3g} (alpha {stats.alpha} "
                                  f"over up to {stats.max_seeds - (first_n or stats.max_seeds) + 1} looks)")
    if p > stats.futility:
        return verdict("reject", f"unlikely to beat the baseline by the {stats.min_effect} bpb floor: {seen}, "
                                 f"p={p:.3g} > {stats.futility}")
    if n < stats.max_seeds:
        return verdict("more_seeds", f"undecided: {seen}, p={p:.3g} between {alpha:.3g} and {stats.futility}; "
                                     f"adding seed {n + 1}")
    return verdict("reject", f"not shown better at the seed cap: {seen}, p={p:.3g} still >= {alpha:.3g} with all "
                             f"{stats.max_seeds} seeds")
