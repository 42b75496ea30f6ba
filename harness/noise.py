"""
The ladder's noise model: how far paired differences spread when a change does nothing, per kind of change, and
how one decision borrows strength from everything its rung has measured.

Paired differences d = val_bpb(candidate) - val_bpb(baseline) on the same seed slot (same init, same data order)
spread for two reasons, and how much depends on the kind of change (search_spaces/knobs.py):
- structural (a module added or removed, a pattern or algorithm swapped): the candidate's trajectory decorrelates
  from its paired baseline run about as much as another initialisation's does. Its null is the baseline against
  itself with another init on the same data order.
- parametric (a learning rate, a beta, an init scale): the run stays correlated with its paired baseline run. Its
  null is a perturbation too small to matter (e.g. a learning rate times 1 + 1e-3) at the same seed.
A rung measures both nulls (NullSpread: a root mean square around zero, since a null difference has mean zero).

What a change is compared with on its slot, its *control*, also depends on its kind (CONTROL_INITS). A parametric
change is compared with the baseline run at its own seed, the run it stays correlated with. A structural change
shares nothing with that run but the data order, so it is compared with the mean of the baseline recipe's runs with
two inits on its slot: the baseline and the structural null. Every structural candidate of a search shares its
control's runs, and with the baseline alone one unlucky draw of its few inits tilts every structural comparison the
same way (the cpu tier's A/A at seed base 0: the baseline's runs ended above 27 of the 30 other inits' runs on the
same data orders, and 2 of 6 structural nulls were promoted). The mean of two inits halves that shared variance,
and a candidate's paired variance falls from 2 to 1.5 init variances (the MDE by a factor 0.87), for the structural
null's runs on the slots beyond the rung's first seeds. It does not make the candidates independent: a control drawn
high still promotes several together (the same A/A with this control: 4 of 10, the control +0.0025 above the nulls'
own inits), and the next rung, with new inits, is what judges them again. `control_spread` turns a null spread into the spread a
change of that kind that does nothing shows against its control.

A decision uses the candidate's own paired spread (a sample variance with n - 1 degrees of freedom), moderated by
the rung's other *units* of the same kind: the null, and the other candidates' paired spreads. This is the
empirical-Bayes moderated t-test of Smyth (2004), as in limma's squeezeVar: the units' variances are modelled as
draws from a scaled inverse chi-square prior (s0^2, d0) fitted by moments of their log variances (`fit_prior`);
the candidate's posterior variance (d0 s0^2 + d s^2) / (d0 + d) has d0 + d degrees of freedom (at most the pool's
total). When the units' variances scatter more than sampling alone explains, d0 comes out small and the candidate
mostly keeps its own spread; when they agree, d0 is large and three or four seeds get the power of many. With
fewer than MIN_PRIOR_UNITS units there is no prior and the test is the plain paired t-test. In every case the
spread used is never below the kind's null spread (a change is never less noisy than doing nothing).

Sequential looks. A borderline result gets another seed and is tested again (up to max_seeds), and every look is
another chance for a null to cross the line: with three looks at alpha = 0.05 each and a futility stop at p > 0.5,
9% of nulls are promoted, not 5% (simulated below). So a tier's alpha is the false-promotion rate of the *whole*
procedure, and each look tests at `per_look_alpha`: the level at which the looks together promote a null change
with probability alpha, found by simulating the procedure (paired differences of a null change, the plain t-test
with n - 1 degrees of freedom at each look: the least favourable case; moderation only adds degrees of freedom).

The minimum detectable effect (`mde`) is the true improvement this test promotes with the stated power (80%): the
min effect plus (t_{1-alpha} + t_{power}) standard errors, with the test's degrees of freedom and its per-look alpha.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy import stats as scipy_stats

MIN_PRIOR_UNITS = 3  # fewer variances than this say nothing about how they scatter: no prior, no moderation
DEFAULT_POWER = 0.8


@dataclass(frozen=True)
class Spread:
    """A variance estimate of paired differences and its degrees of freedom."""
    var: float
    df: float

    @property
    def sd(self) -> float:
        return math.sqrt(self.var)

    @classmethod
    def of_null(cls, differences: list[float]) -> Spread | None:
        """Null differences have mean zero by construction: their mean square, with n degrees of freedom."""
        if not differences:
            return None
        return cls(statistics.fmean(d * d for d in differences), len(differences))

    @classmethod
    def of_sample(cls, deltas: list[float]) -> Spread | None:
        """A candidate's paired differences: the sample variance around their mean, n - 1 degrees of freedom."""
        if len(deltas) < 2:
            return None
        return cls(statistics.variance(deltas), len(deltas) - 1)


CONTROL_INITS = {"parametric": 1, "structural": 2}  # inits of the baseline recipe averaged into a slot's control


def control_spread(null: Spread | None, kind: str | None) -> Spread | None:
    """The spread of a change of `kind` that does nothing against its control, from the kind's null spread. A
    parametric null is measured against the control itself (the baseline at the same seed): unchanged. A structural
    null is two inits against each other, variance 2 s^2 for an init variance s^2, while a change against the mean
    of k inits has s^2 (1 + 1/k): the null's variance times (1 + 1/k) / 2."""
    k = CONTROL_INITS.get(kind or "", 1)
    if null is None or k == 1:
        return null
    return Spread(null.var * (1 + 1 / k) / 2, null.df)


@dataclass(frozen=True)
class Prior:
    """A scaled inverse chi-square prior on the variance of a kind's paired differences at a rung."""
    var: float                      # s0^2
    df: float                       # d0; math.inf when every unit is consistent with one shared variance
    units: int                      # how many variances it was fitted from
    pooled_df: float                # their total degrees of freedom (caps a posterior's)


def trigamma_inverse(y: float) -> float:
    """x with trigamma(x) = y (y > 0), by Newton's method on 1/trigamma as in limma (Smyth 2004)."""
    if not y > 0:
        raise ValueError(f"trigamma_inverse({y}): expected a positive number")
    if y > 1e7:
        return 1.0 / math.sqrt(y)
    if y < 1e-6:
        return 1.0 / y
    x = 0.5 + 1.0 / y
    for _ in range(50):
        tri = float(special.polygamma(1, x))
        step = tri * (1.0 - tri / y) / float(special.polygamma(2, x))
        x += step
        if -step / x < 1e-8:
            break
    return x


def fit_prior(units: list[Spread]) -> Prior | None:
    """The prior (s0^2, d0) that the units' variances are draws from, by the method of moments on log variances
    (limma's fitFDist without covariates). None with fewer than MIN_PRIOR_UNITS usable units (zero variances, from
    bit-identical runs, carry no scale information and are left out)."""
    usable = [u for u in units if u.var > 0 and u.df > 0]
    if len(usable) < MIN_PRIOR_UNITS:
        return None
    e = [math.log(u.var) - float(special.digamma(u.df / 2)) + math.log(u.df / 2) for u in usable]
    emean = statistics.fmean(e)
    evar = statistics.variance(e) - statistics.fmean(float(special.polygamma(1, u.df / 2)) for u in usable)
    pooled = sum(u.df for u in usable)
    if evar > 0:
        d0 = 2 * trigamma_inverse(evar)
        s0 = math.exp(emean + float(special.digamma(d0 / 2)) - math.log(d0 / 2))
    else:  # no more scatter than sampling explains: one shared variance, estimated by the mean (as limma does)
        d0, s0 = math.inf, statistics.fmean(u.var for u in usable)
    return Prior(var=s0, df=d0, units=len(usable), pooled_df=pooled)


def moderate(own: Spread | None, prior: Prior | None) -> Spread | None:
    """The candidate's posterior variance: its own (None with one pair) shrunk towards the prior's. Without a prior,
    its own spread unchanged."""
    if prior is None:
        return own
    d, s2 = (own.df, own.var) if own is not None else (0.0, 0.0)
    cap = prior.pooled_df + d
    if math.isinf(prior.df):
        return Spread(prior.var, cap)
    return Spread((prior.df * prior.var + d * s2) / (prior.df + d), min(prior.df + d, cap))


@dataclass(frozen=True)
class PairedTest:
    mean: float                     # mean paired difference (negative = the candidate is better)
    sd: float | None                # the spread used: moderated, never below the null's
    df: float                       # its degrees of freedom
    std_error: float | None
    p_value: float | None           # one-sided, H1: mean < -min_effect; None when there is no spread to judge by
    mde: float | None               # minimum detectable effect at this n (bpb, positive = improvement)
    moderated: bool                 # did a prior from the rung's other units enter?
    floored: bool                   # did the null spread set the spread?


def paired_test(deltas: list[float], min_effect: float, alpha: float, null: Spread | None = None,
                prior: Prior | None = None, power: float = DEFAULT_POWER) -> PairedTest:
    """The moderated one-sided paired t-test of H1: mean(d) < -min_effect (see the module docstring). With no prior
    and no null it is exactly the plain paired t-test."""
    n = len(deltas)
    mean = statistics.fmean(deltas)
    posterior = moderate(Spread.of_sample(deltas), prior)
    sd, df = (posterior.sd, posterior.df) if posterior is not None else (0.0, 0.0)
    floored = False
    if null is not None and null.sd > sd:
        sd, df, floored = null.sd, max(df, null.df), True
    if df < 1:
        return PairedTest(mean, None, df, None, None, None, prior is not None, floored)
    se = sd / math.sqrt(n)
    if se == 0.0:  # identical deltas on every slot and a zero null (deterministic runs): the sign decides
        return PairedTest(mean, 0.0, df, 0.0, 0.0 if mean < -min_effect else 1.0, min_effect, prior is not None, floored)
    p = float(scipy_stats.t.cdf((mean + min_effect) / se, df))
    return PairedTest(mean, sd, df, se, p, mde(sd, n, df, alpha, power, min_effect), prior is not None, floored)


def mde(sd: float, n: int, df: float, alpha: float, power: float = DEFAULT_POWER, min_effect: float = 0.0) -> float:
    """The smallest true improvement (bpb) a one-sided paired t-test at level alpha promotes with probability
    `power`, given the spread of paired differences, n pairs and the test's degrees of freedom."""
    if n < 1 or df <= 0:
        return math.inf
    t = float(scipy_stats.t.ppf(1 - alpha, df)) + float(scipy_stats.t.ppf(power, df))
    return min_effect + t * sd / math.sqrt(n)


@functools.lru_cache(maxsize=64)
def per_look_alpha(alpha: float, first_n: int, max_n: int, futility: float = 0.5, simulations: int = 200_000) -> float:
    """The level of each look of the sequential procedure (test at first_n pairs; while alpha_look <= p <= futility,
    add a pair and test again, up to max_n) that promotes a null change with probability `alpha` overall. Found by
    bisection on a simulation of null paired differences (normal, any spread: the t statistic does not depend on
    it) with a fixed random seed, so a tier always gets the same level. One look: alpha itself."""
    if max_n <= first_n:
        return alpha
    first_n = max(first_n, 2)  # a look needs a spread; smaller first looks are not tests (see paired_test)
    if max_n <= first_n:
        return alpha
    draws = np.random.default_rng(20261201).standard_normal((simulations, max_n))
    cumulative = np.cumsum(draws, axis=1)
    cumulative_sq = np.cumsum(draws * draws, axis=1)
    p_values = []
    for n in range(first_n, max_n + 1):
        mean = cumulative[:, n - 1] / n
        sd = np.sqrt(np.maximum(cumulative_sq[:, n - 1] - n * mean * mean, 0.0) / (n - 1))
        p_values.append(scipy_stats.t.cdf(mean / (sd / math.sqrt(n)), n - 1))

    def overall(level: float) -> float:
        alive = np.ones(simulations, dtype=bool)
        promoted = 0
        for p in p_values:
            crossed = alive & (p < level)
            promoted += int(crossed.sum())
            alive &= ~crossed & (p <= futility)
        return promoted / simulations

    low, high = 0.0, alpha
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if overall(mid) <= alpha else (low, mid)
    return low
