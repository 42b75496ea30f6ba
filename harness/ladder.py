"""
Promotion on the depth ladder: a candidate moves up a rung only when it beats the baseline beyond noise.

At each rung the baseline and the candidate run on the same seed slots (same init seed and data order: the
paired design), and the decision looks at the per-slot differences d = val_bpb(candidate) - val_bpb(baseline)
(negative = better):

- H0: mean(d) >= -min_effect (no improvement of at least min_effect); H1: mean(d) < -min_effect.
- One-sided paired t-test: t = (mean(d) + min_effect) / (s / sqrt(n)), p = P(T_{df} <= t).
- s is the sample standard deviation of d, but never less than the rung's *noise floor*: the spread of the
  paired differences a change that does nothing produces. The search measures it at every rung it uses, from
  repeated baseline runs: the baseline against a replica of itself with the same data order and another
  initialisation (the root mean square of those differences; their mean is zero by construction). With two or
  three seeds a sample spread can be tiny by luck; the floor keeps such a result from looking significant. When
  the floor is what sets s, the test borrows the floor's degrees of freedom.
- promote when p < alpha; reject when p > futility (the estimate is not even an improvement of min_effect) or
  any candidate run failed; otherwise the result is borderline: add a seed (to both) and decide again, up to
  max_seeds, then reject.

`python -m harness.search --aa N` measures how often this procedure promotes a change that does nothing.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats as scipy_stats

from experiments.catalog import Statistics


@dataclass
class Verdict:
    verdict: str                    # promote | reject | more_seeds
    deltas: dict[int, float]        # seed slot -> candidate - baseline
    mean_delta: float | None
    std_error: float | None
    p_value: float | None
    n: int
    reason: str


@dataclass
class NoiseFloor:
    std: float
    n: int                          # paired null differences it was measured from (its degrees of freedom)

    @classmethod
    def from_null_pairs(cls, differences: list[float]) -> NoiseFloor | None:
        """The spread of paired differences between runs that differ by nothing but their initialisation: a root
        mean square around zero (the true mean of a null difference is zero), with n degrees of freedom."""
        if not differences:
            return None
        return cls(math.sqrt(statistics.fmean(d * d for d in differences)), len(differences))


def paired_test(deltas: list[float], min_effect: float, floor: NoiseFloor | None) -> tuple[float, float | None, float | None]:
    """(mean delta, standard error, one-sided p-value) for H1: mean(d) < -min_effect. The p-value is None when
    there is no spread to judge by (a single pair and no noise floor yet)."""
    n = len(deltas)
    mean = statistics.fmean(deltas)
    sd, df = (statistics.stdev(deltas), n - 1) if n >= 2 else (0.0, 0)
    if floor is not None and floor.std > sd:
        sd, df = floor.std, max(df, floor.n)
    if df < 1:
        return mean, None, None
    if sd == 0.0:  # identical deltas on every slot (deterministic runs): the sign decides
        return mean, 0.0, 0.0 if mean < -min_effect else 1.0
    se = sd / math.sqrt(n)
    return mean, se, float(scipy_stats.t.cdf((mean + min_effect) / se, df))


def decide(candidate: dict[int, float | None], baseline: dict[int, float], stats: Statistics,
           floor: NoiseFloor | None, failed: str | None = None) -> Verdict:
    """The ladder's decision for one candidate at one rung. `candidate` and `baseline` map seed slots to final
    val_bpb; `failed` is the failure of a candidate run, if any (the candidate is then rejected)."""
    slots = sorted(s for s in candidate if s in baseline and candidate[s] is not None)
    deltas = {s: candidate[s] - baseline[s] for s in slots}
    if failed:
        mean = statistics.fmean(deltas.values()) if deltas else None
        return Verdict("reject", deltas, mean, None, None, len(deltas), f"a candidate run failed: {failed}")
    if not deltas:
        return Verdict("more_seeds", deltas, None, None, None, 0, "no paired results yet")
    mean, se, p = paired_test(list(deltas.values()), stats.min_effect, floor)
    n = len(deltas)
    if p is None:
        if n < stats.max_seeds:
            return Verdict("more_seeds", deltas, mean, se, p, n, "one pair and no noise floor: adding a seed")
        return Verdict("reject", deltas, mean, se, p, n, "no spread to judge by at the seed cap")
    if p < stats.alpha:
        return Verdict("promote", deltas, mean, se, p, n, f"p={p:.3g} < alpha={stats.alpha}")
    if p > stats.futility:
        return Verdict("reject", deltas, mean, se, p, n, f"p={p:.3g} > {stats.futility}: not an improvement of {stats.min_effect}")
    if n < stats.max_seeds:
        return Verdict("more_seeds", deltas, mean, se, p, n, f"borderline p={p:.3g}: adding seed {n + 1}")
    return Verdict("reject", deltas, mean, se, p, n, f"p={p:.3g} still >= alpha={stats.alpha} at the seed cap ({stats.max_seeds})")
