"""The ladder's noise model and effect sizes: the moderated paired test (against an independent computation and
the plain t-test it falls back to), the null spread as a lower bound, the minimum detectable effect (against the
exact power of the noncentral t), the compute multiplier of synthetic learning curves, kinds of change and nulls."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import optimize, special
from scipy import stats as scipy_stats

from harness.compute_multiplier import compute_multiplier
from harness.experiment import NOISE_FLOOR_REPLICA, PARAMETRIC_NULL_EPSILON, Experiment, parametric_null_tweaks
from harness.noise import (
    CONTROL_INITS,
    Spread,
    control_spread,
    fit_prior,
    mde,
    moderate,
    paired_test,
    per_look_alpha,
    trigamma_inverse,
)
from model.config import CONFIG_CLASSES
from search_spaces import KINDS, KNOBS, change_kind

# --- the plain paired t-test and the null spread -------------------------------------------------------------


def test_with_nothing_to_pool_the_test_is_the_plain_paired_t_test():
    deltas = [-0.010, -0.006, -0.012, -0.004]
    test = paired_test(deltas, 0.002, alpha=0.05)
    expected = scipy_stats.ttest_1samp([d + 0.002 for d in deltas], 0.0, alternative="less")
    assert test.mean == pytest.approx(-0.008) and test.p_value == pytest.approx(expected.pvalue)
    assert test.std_error == pytest.approx(scipy_stats.sem(deltas)) and test.df == 3
    assert not test.moderated and not test.floored


def test_the_null_spread_bounds_a_lucky_small_spread():
    deltas = [-0.0050, -0.0051]  # n=2 with a tiny spread: alone, wildly significant
    alone = paired_test(deltas, 0.0, alpha=0.05)
    null = Spread.of_null([0.01, -0.01])  # the baseline against itself with another init: rms 0.01, 2 df
    floored = paired_test(deltas, 0.0, alpha=0.05, null=null)
    assert alone.p_value < 0.01 and floored.p_value > 0.1 and floored.floored
    assert floored.std_error == pytest.approx(0.01 / 2 ** 0.5)
    assert floored.p_value == pytest.approx(scipy_stats.t.cdf(-0.00505 / (0.01 / 2 ** 0.5), 2))


def test_a_null_spread_is_the_rms_of_null_differences():
    # A null difference has mean zero by construction: a consistent offset is noise too, not a zero spread.
    assert Spread.of_null([0.02, 0.02]).sd == pytest.approx(0.02)
    assert Spread.of_null([0.03, -0.04]).sd == pytest.approx((0.0009 + 0.0016) ** 0.5 / 2 ** 0.5)
    assert Spread.of_null([0.01, 0.0, -0.02]).df == 3 and Spread.of_null([]) is None
    assert Spread.of_sample([0.01]) is None and Spread.of_sample([0.01, 0.03]).df == 1


# --- empirical-Bayes moderation --------------------------------------------------------------------------------

# Four units of one kind at a rung: a null (mean square of 3 null differences, 3 df) and three candidates' sample
# variances (2, 3 and 2 df).
UNITS = [Spread(3.6e-5, 3), Spread(0.4e-5, 2), Spread(9.4e-5, 3), Spread(1.0e-5, 2)]


def test_the_null_spread_against_a_control_of_two_inits():
    # Runs on one data order differ by their init: val_bpb = slot effect + init effect (sd 0.003). The structural
    # null measures two inits against each other; a structural change that does nothing, compared with the mean of
    # the baseline and the structural null, spreads as control_spread says (1.5 init variances, not 2).
    rng = np.random.default_rng(0)
    slot = rng.normal(2.34, 0.01, size=200_000)
    baseline, null, candidate = (slot + rng.normal(0, 0.003, size=slot.size) for _ in range(3))
    measured = Spread.of_null(list(null - baseline))
    against_control = candidate - (baseline + null) / 2
    assert CONTROL_INITS == {"parametric": 1, "structural": 2}
    assert control_spread(measured, "structural").sd == pytest.approx(float(np.sqrt(np.mean(against_control ** 2))), rel=0.01)
    assert control_spread(measured, "structural").sd == pytest.approx(0.003 * math.sqrt(1.5), rel=0.01)
    assert control_spread(measured, "parametric") == measured  # judged against the baseline it was measured with
    assert control_spread(None, "structural") is None


def reference_prior(units):
    """limma's fitFDist, written out independently: moments of the log variances, the inverse trigamma by a
    bracketing root finder instead of Newton's method."""
    e = [math.log(u.var) - special.digamma(u.df / 2) + math.log(u.df / 2) for u in units]
    n = len(e)
    emean = sum(e) / n
    evar = sum((x - emean) ** 2 for x in e) / (n - 1) - sum(special.polygamma(1, u.df / 2) for u in units) / n
    if evar <= 0:
        return sum(u.var for u in units) / n, math.inf
    half_d0 = optimize.brentq(lambda x: special.polygamma(1, x) - evar, 1e-8, 1e8)
    d0 = 2 * half_d0
    return math.exp(emean + special.digamma(d0 / 2) - math.log(d0 / 2)), d0


def test_the_prior_matches_an_independent_computation_of_limmas_fit():
    prior = fit_prior(UNITS)
    s0, d0 = reference_prior(UNITS)
    assert prior.var == pytest.approx(s0, rel=1e-6) and prior.df == pytest.approx(d0, rel=1e-6)
    assert prior.units == 4 and prior.pooled_df == 10
    # limma 3.54.1 (R, Debian's r-bioc-limma): squeezeVar(c(3.6e-5, 0.4e-5, 9.4e-5, 1.0e-5), c(3, 2, 3, 2)) gives
    # var.prior 2.628060485e-05 and df.prior 6.636366962.
    assert prior.var == pytest.approx(2.628060485e-05, rel=1e-8) and prior.df == pytest.approx(6.636366962, rel=1e-8)


def test_the_moderated_test_by_hand():
    prior = fit_prior(UNITS)
    deltas = [-0.012, -0.004, -0.009]
    own = Spread.of_sample(deltas)
    test = paired_test(deltas, 0.0, alpha=0.05, prior=prior)
    # Posterior variance (d0 s0^2 + d s^2) / (d0 + d) with d0 + d degrees of freedom (under the pooled cap of 12).
    var = (prior.df * prior.var + 2 * own.var) / (prior.df + 2)
    df = min(prior.df + 2, prior.pooled_df + 2)
    assert test.sd == pytest.approx(math.sqrt(var)) and test.df == pytest.approx(df) and test.moderated
    t = (sum(deltas) / 3) / math.sqrt(var / 3)
    assert test.p_value == pytest.approx(scipy_stats.t.cdf(t, df))
    # The plain test on the same deltas: 2 degrees of freedom only, so a larger p.
    assert paired_test(deltas, 0.0, alpha=0.05).p_value > test.p_value


def test_scattered_variances_leave_a_candidate_mostly_its_own():
    scattered = [Spread(1e-8, 2), Spread(4e-5, 2), Spread(2e-7, 3), Spread(9e-5, 2)]
    prior = fit_prior(scattered)
    assert prior.df < 2  # they scatter far beyond sampling: a weak prior
    # limma gives var.prior 1.531499728e-07 and df.prior 0.4919790668 for the scattered ones.
    assert prior.var == pytest.approx(1.531499728e-07, rel=1e-8) and prior.df == pytest.approx(0.4919790668, rel=1e-8)
    consistent = fit_prior([Spread(3.0e-5, 4), Spread(3.1e-5, 4), Spread(2.9e-5, 4)])
    assert math.isinf(consistent.df) and consistent.var == pytest.approx(3.0e-5)  # limma: Inf and their mean
    post = moderate(Spread(1e-6, 2), consistent)  # one shared variance: the candidate gets it, with the pool's df
    assert post.var == consistent.var and post.df == consistent.pooled_df + 2


def test_no_prior_from_fewer_than_three_variances():
    assert fit_prior(UNITS[:2]) is None
    assert fit_prior([Spread(0.0, 2), *UNITS[:2]]) is None  # a zero variance (bit-identical runs) carries no scale
    assert moderate(Spread(1e-5, 2), None) == Spread(1e-5, 2)


def test_trigamma_inverse_inverts_trigamma():
    for x in (0.05, 0.7, 3.0, 40.0, 900.0):
        assert trigamma_inverse(float(special.polygamma(1, x))) == pytest.approx(x, rel=1e-6)
    with pytest.raises(ValueError):
        trigamma_inverse(0.0)


# --- power ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [3, 5, 12])
def test_the_mde_has_the_stated_power(n):
    """At a true improvement of MDE, the one-sided t-test at alpha rejects with probability ~80% (the exact power
    from the noncentral t distribution; the MDE formula is the usual t-quantile approximation of it)."""
    sd, alpha, min_effect = 0.006, 0.05, 0.0005
    effect = mde(sd, n, n - 1, alpha, 0.8, min_effect)
    critical = scipy_stats.t.ppf(alpha, n - 1)
    noncentrality = -(effect - min_effect) / (sd / math.sqrt(n))
    power = scipy_stats.nct.cdf(critical, n - 1, noncentrality)
    assert 0.77 < power < 0.83
    assert mde(sd, n, n - 1, alpha, 0.8) == pytest.approx(effect - min_effect)
    assert mde(sd, n + 1, n, alpha) < mde(sd, n, n - 1, alpha)  # more seeds, smaller detectable effect


def test_a_decision_states_its_mde():
    test = paired_test([-0.004, -0.006, -0.005], 0.0, alpha=0.05, null=Spread.of_null([0.001, -0.002, 0.0015]))
    assert test.mde == pytest.approx(mde(test.sd, 3, test.df, 0.05, 0.8))


# --- the compute multiplier -------------------------------------------------------------------------------------

def power_law(compute):
    return 5.0 * compute ** -0.1


CURVE = [(c, power_law(c)) for c in (1e9, 2e9, 4e9, 8e9, 1.6e10)]


def test_compute_multiplier_of_a_power_law_curve_is_exact():
    # The candidate reaches, with 8e9 FLOPs, what the baseline reaches at 1.6e10: a 2x multiplier, interpolated.
    m = compute_multiplier(CURVE, power_law(1.6e10), 8e9)
    assert m.value == pytest.approx(2.0, rel=1e-9) and not m.extrapolated
    between = compute_multiplier(CURVE, power_law(3e9), 1e9)  # inside a segment: exact in log-log
    assert between.value == pytest.approx(3.0, rel=1e-9) and not between.extrapolated
    worse = compute_multiplier(CURVE, power_law(4e9), 8e9)
    assert worse.value == pytest.approx(0.5, rel=1e-9)


def test_compute_multiplier_past_the_curve_is_extrapolated_and_flagged():
    beyond = compute_multiplier(CURVE, power_law(6.4e10), 1.6e10)
    assert beyond.value == pytest.approx(4.0, rel=1e-9) and beyond.extrapolated and "extrapolated" in beyond.describe()
    before = compute_multiplier(CURVE, power_law(5e8), 1e9)
    assert before.value == pytest.approx(0.5, rel=1e-9) and before.extrapolated
    flat = compute_multiplier([(1e9, 3.0), (2e9, 3.0)], 2.9, 2e9)  # a flat end says nothing
    assert flat.value is None
    assert compute_multiplier([(0, 9.0), (1e9, 3.0)], 2.9, 1e9).value is None  # one usable point


def test_compute_multiplier_takes_the_first_time_the_baseline_reaches_the_value():
    noisy = [(1e9, 3.0), (2e9, 2.8), (3e9, 2.85), (4e9, 2.7)]
    m = compute_multiplier(noisy, 2.9, 2e9)
    x = math.exp(math.log(1e9) + (math.log(2.9) - math.log(3.0)) * (math.log(2e9) - math.log(1e9)) / (math.log(2.8) - math.log(3.0)))
    assert m.value == pytest.approx(x / 2e9)


# --- kinds of change and nulls ------------------------------------------------------------------------------------

def test_every_knob_has_a_kind_and_switches_are_structural():
    assert set(KINDS) == {"parametric", "structural"}
    for knob in KNOBS.values():
        assert knob.kind in KINDS, knob.name
        if knob.type == "bool":  # a switch adds or removes a mechanism
            assert knob.kind == "structural", knob.name
        if knob.type in ("float", "logfloat"):  # a continuous setting keeps the trajectory correlated
            assert knob.kind == "parametric", knob.name


def test_a_change_is_structural_if_any_part_of_it_is():
    assert change_kind({"matrix_lr": 0.04}) == "parametric"
    assert change_kind({"matrix_lr": 0.04, "value_embeds": False}) == "structural"
    assert change_kind({"matrix_lr": 0.04}, patch="--- a/model/gpt.py") == "structural"
    assert Experiment(tweaks={"qk_scale": 1.5}, tier="cpu").kind == "parametric"
    assert Experiment(tweaks={"smear": False}, tier="cpu").kind == "structural"


def test_nulls_of_each_kind():
    base = {"matrix_lr": 0.08, "embedding_lr": 1.2}
    structural = Experiment(tweaks={}, tier="cpu", replica=3)
    parametric = Experiment(tweaks=parametric_null_tweaks(3, base), tier="cpu", replica=3)
    assert structural.kind == "structural" and parametric.kind == "parametric"
    # Structural: another init on the same data order; parametric: the baseline's own seed.
    assert structural.seed(1) == 3001 and structural.data_seed(1) == 1
    assert parametric.seed(1) == 1 and parametric.data_seed(1) == 1
    (name, value), = parametric_null_tweaks(NOISE_FLOOR_REPLICA, base).items()
    assert name == "matrix_lr" and value == pytest.approx(0.08 * (1 + PARAMETRIC_NULL_EPSILON))
    perturbations = [tuple(parametric_null_tweaks(r, base).items()) for r in range(1, 33)]
    perturbations.append(tuple(parametric_null_tweaks(NOISE_FLOOR_REPLICA, base).items()))
    assert len(set(perturbations)) == len(perturbations)  # every null is its own run
    defaults = {f.name: f.default for cls in CONFIG_CLASSES for f in dataclasses.fields(cls)}
    for (knob, value), in perturbations:  # each moves one setting by at most a few 1e-3 of its baseline value
        relative = value / base.get(knob, defaults[knob]) - 1
        assert 0 < abs(relative) <= 3 * PARAMETRIC_NULL_EPSILON + 1e-12, (knob, value)


def test_a_seed_base_shifts_every_slot():
    cand = Experiment(tweaks={"smear": False}, tier="cpu")
    null = Experiment(tweaks={}, tier="cpu", replica=NOISE_FLOOR_REPLICA)
    assert [cand.seed(s, 100) for s in range(3)] == [100, 101, 102]
    assert [cand.data_seed(s, 100) for s in range(3)] == [100, 101, 102]
    assert null.seed(2, 100) == 999102 and null.data_seed(2, 100) == 102
    assert cand.slot(cand.seed(4, 100), 100) == 4 and null.slot(null.seed(4, 100), 100) == 4


# --- sequential looks -----------------------------------------------------------------------------------------------

def test_the_per_look_alpha_holds_the_whole_sequence_of_looks_at_alpha():
    """Simulated independently (another random stream, the same rule as harness.ladder.decide): nulls tested at 3
    seeds, a seed added while per-look alpha <= p <= 0.5, up to 5, are promoted at the tier's alpha overall; at
    alpha on every look they would be promoted far more often."""
    import numpy as np
    level = per_look_alpha(0.05, 3, 5, 0.5)
    assert 0.015 < level < 0.05

    def promoted(at: float) -> float:
        rng = np.random.default_rng(7)
        x = rng.standard_normal((100_000, 5))
        alive, hits = np.ones(len(x), bool), np.zeros(len(x), bool)
        for n in (3, 4, 5):
            p = scipy_stats.ttest_1samp(x[:, :n], 0.0, axis=1, alternative="less").pvalue
            hits |= alive & (p < at)
            alive &= (p >= at) & (p <= 0.5)
        return hits.mean()

    assert promoted(level) == pytest.approx(0.05, abs=0.004)
    assert promoted(0.05) > 0.08
    assert per_look_alpha(0.05, 3, 3) == 0.05  # one look: nothing to spread


def test_seeds_to_detect_is_the_fewest_seeds_whose_mde_reaches_the_effect():
    from harness.search_report import MOST_SEEDS, seeds_to_detect
    sd, df, n, alpha, power, floor = 0.02, 1.0, 2, 0.05, 0.8, 0.0005
    for effect in (0.05, 0.02, 0.01):
        need = seeds_to_detect(sd, df, n, effect, alpha, power, floor)
        assert need is not None and mde(sd, need, df + need - n, alpha, power, floor) <= effect
        assert need == 2 or mde(sd, need - 1, df + need - 1 - n, alpha, power, floor) > effect
    # Smaller effects need more seeds; an effect at the floor, or one only MOST_SEEDS+ seeds resolve, gets none.
    assert seeds_to_detect(sd, df, n, 0.02, alpha, power, floor) < seeds_to_detect(sd, df, n, 0.01, alpha, power, floor)
    assert seeds_to_detect(sd, df, n, floor, alpha, power, floor) is None
    assert mde(sd, MOST_SEEDS, df + MOST_SEEDS - n, alpha, power, floor) > 0.004  # ~200 seeds would be needed
    assert seeds_to_detect(sd, df, n, 0.004, alpha, power, floor) is None
