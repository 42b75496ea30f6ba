"""The hypothesis ledger's judgement (harness/hypotheses.py) and the search's steering (harness/steering.py): which
decisions make a plateau and which category it leaves, which failure bursts pause a category, and what the Optuna
proposer does under both."""

import optuna
import pytest

from harness.hypotheses import informative_first, judge
from harness.proposers.optuna_tpe import OptunaProposer
from harness.steering import Course, SteeringConfig, available_categories, course
from search_spaces import KNOBS, Space, change_categories

RUNGS = ["d2", "d4"]


def decision(verdict: str, rung: str = "d2", mean: float | None = 0.0, mde: float | None = 0.002, reason: str = "",
             experiment: str = "e") -> dict:
    return {"experiment_id": experiment, "verdict": verdict, "from_rung": rung, "mean_delta": mean, "mde": mde,
            "p_value": 0.3, "n": 4, "compute_multiplier": None, "reason": reason}


@pytest.mark.parametrize("decisions, status, rung", [
    ([], "pending", None),
    ([decision("more_seeds")], "pending", None),
    ([decision("more_seeds"), decision("promote", mean=-0.004)], "supported", "d2"),
    # Promoted at d2, then the larger rung says its gain was too small to see: the last decision judges.
    ([decision("promote", mean=-0.004), decision("reject", "d4", mean=-0.0005, mde=0.003)], "inconclusive", "d4"),
    ([decision("reject", mean=0.0031, mde=0.002)], "refuted", "d2"),
    ([decision("reject", mean=0.0011, mde=0.002)], "inconclusive", "d2"),      # worse, but below its MDE
    ([decision("reject", mean=-0.0030, mde=0.002)], "inconclusive", "d2"),     # better, not beyond noise
    ([decision("reject", mean=0.0004, reason="a candidate run failed: seed 1 crash")], "failed", "d2"),
    ([decision("reject", mean=None, mde=None)], "failed", "d2"),
    ([decision("reject", mean=0.0011, mde=None)], "refuted", "d2"),            # no test, no MDE: worse is worse
    ([decision("reject", mean=0.0, mde=None, reason="identical to the baseline at d2: ...")], "inconclusive", "d2"),
])
def test_a_hypothesis_is_judged_by_its_last_decision(decisions, status, rung):
    got, evidence = judge(decisions, RUNGS)
    assert got == status
    assert evidence.get("rung") == rung
    if rung:
        assert evidence["rule"] and str(evidence["rung"]) in evidence["rule"]


def test_the_ledger_puts_the_most_informative_first():
    def row(i, status, mean=None, mde=0.002, rung_index=0):
        return {"id": i, "status": status, "evidence": {"mean_delta": mean, "mde": mde, "rung_index": rung_index}}
    rows = [row(1, "pending"), row(2, "inconclusive", 0.0001), row(3, "refuted", 0.003), row(4, "supported", -0.002),
            row(5, "supported", -0.001, rung_index=1), row(6, "refuted", 0.010), row(7, "failed"),
            row(8, "inconclusive", 0.0019), row(9, "pending")]
    assert [r["id"] for r in informative_first(rows)] == [5, 4, 6, 3, 7, 8, 2, 9, 1]


# -----------------------------------------------------------------------------------------------------------
# Steering

ALL = ("architecture", "optimizer", "schedule")
CATS = {"a1": frozenset({"architecture"}), "a2": frozenset({"architecture"}), "a3": frozenset({"architecture"}),
        "o1": frozenset({"optimizer"}), "s1": frozenset({"schedule"})}


def decisions_of(*pairs) -> list[dict]:
    return [{"experiment_id": e, "verdict": v} for e, v in pairs]


def test_knob_categories_and_the_categories_a_space_offers():
    assert KNOBS["smear"].category == "architecture" and KNOBS["matrix_lr"].category == "optimizer"
    assert KNOBS["warmdown_ratio"].category == "schedule"
    assert change_categories({"smear": False, "warmdown_ratio": 0.3}) == {"architecture", "schedule"}
    assert change_categories({}, patch="diff") == {"patch"}
    assert available_categories(Space.named("architecture", {}), patches=False) == ("architecture",)
    assert available_categories(Space.named("all", {}), patches=True) == ("architecture", "optimizer", "schedule", "patch")


def test_a_plateau_is_n_decisions_in_a_row_without_a_promotion_and_leaves_the_category_it_circled_in():
    config = SteeringConfig(plateau=3)
    stalled = decisions_of(("o1", "promote"), ("a1", "reject"), ("a2", "more_seeds"), ("a2", "reject"),
                           ("s1", "reject"), ("a3", "reject"))
    c = course(config, stalled, CATS, [], ALL, ("crash",))
    assert c.stalled_for == 4 and c.leave == "architecture"
    assert c.refusal(frozenset({"architecture"})).startswith("a plateau of 4 decisions")
    assert c.refusal(frozenset({"optimizer"})) is None
    assert c.refusal(frozenset({"architecture", "optimizer"})) is None  # it leaves the circle too
    assert "mostly architecture" in c.lines()[0] and "optimizer, schedule" in c.lines()[0]
    # Two short of the threshold: no plateau; a promotion ends one.
    assert course(config, stalled[:4], CATS, [], ALL, ("crash",)).stalled_for == 0
    assert course(config, stalled + decisions_of(("o1", "promote")), CATS, [], ALL, ("crash",)).stalled_for == 0
    assert course(SteeringConfig(plateau=0), stalled, CATS, [], ALL, ("crash",)).stalled_for == 0
    # Decisions of nulls (not in the candidates' categories) never count.
    assert course(config, decisions_of(("null", "reject")) * 5, CATS, [], ALL, ("crash",)).stalled_for == 0


def test_a_plateau_in_a_space_with_one_category_says_to_widen_it_and_refuses_nothing():
    c = course(SteeringConfig(plateau=2), decisions_of(("a1", "reject"), ("a2", "reject")), CATS, [], ("architecture",),
               ("crash",))
    assert c.stalled_for == 2 and c.leave is None
    assert c.refusal(frozenset({"architecture"})) is None and "widen it" in c.lines()[0]


def test_a_burst_of_failed_runs_pauses_that_category_only():
    config = SteeringConfig(failure_window=4, failure_share=0.5)
    runs = [{"experiment_id": e, "status": st} for e, st in [
        ("o1", "ok"), ("a1", "crash"), ("a1", "oom"), ("o1", "ok"), ("a2", "crash"), ("a2", "ok"), ("s1", "crash")]]
    c = course(config, [], CATS, runs, ALL, ("crash", "oom"))
    assert c.paused == {"architecture": "3 of its last 4 runs failed"}
    assert c.open == ("optimizer", "schedule")
    assert c.refusal(frozenset({"architecture", "optimizer"})).startswith("the architecture category is paused")
    assert c.refusal(frozenset({"optimizer"})) is None
    # Exactly half failed is not more than half; fewer runs than the window decide nothing; share 1 never pauses.
    half = [{"experiment_id": e, "status": st} for e, st in [("a1", "crash"), ("a1", "ok"), ("a2", "oom"), ("a2", "ok")]]
    assert course(config, [], CATS, half, ALL, ("crash", "oom")).paused == {}
    assert course(config, [], CATS, runs[1:3], ALL, ("crash", "oom")).paused == {}
    assert course(SteeringConfig(failure_window=2, failure_share=1.0), [], CATS, runs, ALL, ("crash", "oom")).paused == {}


def test_a_pause_lifts_after_its_decisions_on_probation_and_a_new_burst_pauses_again():
    """The pause as a circuit breaker, replayed from the records: paused by a burst, open again after P decisions
    with its failure window started afresh, off probation after a clean window, paused again by a new burst."""
    from datetime import datetime, timedelta
    t0 = datetime(2026, 1, 1)

    def at(minute: int) -> datetime:
        return t0 + timedelta(minutes=minute)

    def run(minute: int, status: str, experiment: str = "a1") -> dict:
        return {"experiment_id": experiment, "status": status, "finished_at": at(minute)}

    def decided(*minutes: int) -> list[dict]:
        return [{"experiment_id": "o1", "verdict": "reject", "created_at": at(m)} for m in minutes]

    config = SteeringConfig(plateau=0, failure_window=2, failure_share=0.5, pause_for=2)
    failed = ("crash",)
    burst = [run(1, "crash"), run(2, "crash")]
    paused = course(config, decided(3), CATS, burst, ALL, failed)
    assert paused.paused == {"architecture": "2 of its last 2 runs failed"} and paused.probation == {}
    assert "opens architecture again after 2 decisions on them" in paused.lines()[0]
    # Decisions made before the burst do not count, nor those on the paused kind's own changes; the second decision
    # on another kind after it lifts the pause.
    assert course(config, decided(0, 0, 3), CATS, burst, ALL, failed).paused
    own = [{"experiment_id": "a2", "verdict": "reject", "created_at": at(m)} for m in (3, 4, 5)]
    assert course(config, own, CATS, burst, ALL, failed).paused
    lifted = course(config, decided(3, 4), CATS, burst, ALL, failed)
    assert lifted.paused == {} and lifted.probation == {"architecture": "paused after 2 of its last 2 runs failed, then 2 decisions on others"}
    assert lifted.open == ALL and lifted.lines()[0].startswith("probation: architecture proposals are open again")
    # A run that finished during the pause (it was queued before) neither extends nor ends it.
    assert course(config, decided(4, 6), CATS, burst + [run(5, "crash")], ALL, failed).probation
    # On probation the window starts afresh: one failure is not a burst; two are.
    after = burst + [run(7, "crash")]
    assert course(config, decided(3, 4), CATS, after, ALL, failed).probation
    again = course(config, decided(3, 4), CATS, after + [run(8, "crash")], ALL, failed)
    assert again.paused == {"architecture": "2 of its last 2 runs failed"}
    # A full clean window ends probation; --pause-for 0 never lifts; a pause of unknown start never lifts.
    clean = course(config, decided(3, 4), CATS, burst + [run(7, "ok"), run(8, "ok")], ALL, failed)
    assert clean.paused == {} and clean.probation == {}
    forever = SteeringConfig(plateau=0, failure_window=2, failure_share=0.5, pause_for=0)
    assert course(forever, decided(*range(3, 30)), CATS, burst, ALL, failed).paused
    unknown = [{"experiment_id": "a1", "status": "crash"}] * 2
    assert course(config, decided(*range(3, 30)), CATS, unknown, ALL, failed).paused


def test_optuna_under_a_pause_never_proposes_a_paused_knob_and_explores_at_random_on_a_plateau(tmp_path):
    space = Space.named("all", {})
    optuna_proposer = OptunaProposer(space, f"sqlite:///{tmp_path / 'o.db'}", "steer", seed=3)
    optuna_proposer.steer(Course(available=ALL, paused={"architecture": "x", "optimizer": "y"}))
    proposals = optuna_proposer.propose(12)
    assert len(proposals) == 12
    assert all(change_categories(p.tweaks) <= {"schedule"} for p in proposals), [p.tweaks for p in proposals]
    pruned = optuna_proposer.study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert pruned and all(t.user_attrs["paused"] for t in pruned)  # TPE is told those draws were no good
    assert isinstance(optuna_proposer.study.sampler, optuna.samplers.TPESampler)
    optuna_proposer.steer(Course(available=ALL, stalled_for=6, leave="architecture"))
    assert isinstance(optuna_proposer.study.sampler, optuna.samplers.RandomSampler)
    [explored] = optuna_proposer.propose(1)
    assert explored.rationale.startswith("random sample, exploring after a plateau (Optuna trial ")
    optuna_proposer.steer(Course(available=ALL))
    assert optuna_proposer.propose(1)[0].rationale.startswith("TPE sample (Optuna trial ")
    assert isinstance(optuna_proposer.study.sampler, optuna.samplers.TPESampler)
