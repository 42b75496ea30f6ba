"""Replay: a recorded search re-decided under each rule gives the decisions that rule implies, on hand-made runs."""

from __future__ import annotations

import io

import pytest

from harness.experiment import NOISE_FLOOR_REPLICA, Experiment
from harness.replay import load, main, replay, report
from leaderboard import Decision, Run, Store

BASE = {0: 2.340, 1: 2.336, 2: 2.338}   # the baseline at d2, slots 0-2
BASE_D4 = {0: 2.300, 1: 2.304, 2: 2.302}


def experiments():
    return {
        "baseline": Experiment(tweaks={}, tier="cpu"),
        # a real win, about 0.02 on every slot at both rungs
        "good": Experiment(tweaks={"matrix_lr": 0.06}, tier="cpu", name="good"),
        # an A/A null (another init: its seeds are slot + 1000) that drew a lucky first slot
        "lucky_null": Experiment(tweaks={}, tier="cpu", replica=1, name="lucky null"),
        # an A/A null (parametric) that did not
        "null": Experiment(tweaks={"matrix_lr": 0.0799}, tier="cpu", replica=2, name="null"),
        "worse": Experiment(tweaks={"softcap": 30.0}, tier="cpu", name="worse"),
        "failed": Experiment(tweaks={"qk_scale": 1.9}, tier="cpu", name="failed"),
        # the search's own null: a noise measurement, never a candidate
        "noise": Experiment(tweaks={}, tier="cpu", replica=NOISE_FLOOR_REPLICA, name="noise"),
    }


D2 = {  # per experiment: slot -> val_bpb (None: the run failed)
    "baseline": BASE,
    "good": {0: 2.319, 1: 2.317, 2: 2.318},
    "lucky_null": {0: 2.339, 1: 2.339, 2: 2.340},
    "null": {0: 2.341, 1: 2.3365, 2: 2.3385},
    "worse": {0: 2.350, 1: 2.347, 2: 2.349},
    "failed": {0: None, 1: 2.330, 2: 2.331},
    "noise": {0: 2.341, 1: 2.335, 2: 2.339},
}
D4 = {"baseline": BASE_D4, "good": {0: 2.281, 1: 2.285, 2: 2.284}, "noise": {0: 2.301, 1: 2.303, 2: 2.303}}
# What the search itself decided (the ladder): the win at both rungs, everything else rejected at d2.
LADDER = [("good", "d2", "promote"), ("good", "d4", "promote")] + [
    (name, "d2", "reject") for name in ("lucky_null", "null", "worse", "failed")]


@pytest.fixture
def recorded(tmp_path):
    url = f"sqlite:///{tmp_path / 'replay.db'}"
    exps = experiments()
    with Store(url) as store:
        sid = store.start_search("hand-made", tier="cpu", space="all", proposer="optuna",
                                 config={"tier": "cpu", "seed_base": 0, "baseline_experiment_id": exps["baseline"].id})
        for exp in exps.values():
            store.record_experiment(exp.record(), search_id=sid)
        for rung, table in (("d2", D2), ("d4", D4)):
            for name, values in table.items():
                for slot, val in values.items():
                    # "worse" reuses the runs an earlier search made of the same experiment on the same seeds
                    store.record_run(Run(exps[name].id, rung, exps[name].seed(slot), "ok" if val is not None else "failed",
                                         val_bpb=val, search_id=None if name == "worse" else sid))
        # a run of another seed base (slot 50 here) is not this search's
        store.record_run(Run(exps["good"].id, "d2", exps["good"].seed(50), "ok", val_bpb=9.0, search_id=None))
        for name, rung, verdict in LADDER:
            store.record_decision(Decision(exps[name].id, rung, verdict, search_id=sid))
    return url, exps


def outcomes(url, exps, rule):
    with Store(url, read_only=True) as store:
        search = load(store, "hand-made")
    by_name = {name: exp.id for name, exp in exps.items()}
    result = replay(search, rule)
    return {name: result[i].describe() for name, i in by_name.items() if i in result}, result, by_name


def test_each_rule_decides_the_recorded_runs_as_it_implies(recorded):
    url, exps = recorded
    ladder, result, ids = outcomes(url, exps, "ladder")
    assert result[ids["good"]].runs == 6 and result[ids["worse"]].runs == 3  # slot 50 left out, reused runs read
    assert ladder == {"good": "adopted", "lucky_null": "rejected at d2", "null": "rejected at d2",
                      "worse": "rejected at d2", "failed": "rejected at d2"}
    # greedy: one run (slot 0) against the baseline's slot 0. The lucky null's 2.339 < 2.340 promotes it, and the
    # search never ran it at d4: the record cannot say what greedy would have done there.
    greedy, result, ids = outcomes(url, exps, "greedy")
    assert greedy == {"good": "adopted", "lucky_null": "untried at d4", "null": "rejected at d2",
                      "worse": "rejected at d2", "failed": "rejected at d2"}
    assert result[ids["lucky_null"]].promoted_at == ["d2"] and result[ids["good"]].runs == 2
    # halving (eta 3): of the four candidates that finished slot 0 at d2 the best 4 // 3 = 1 goes up; at d4 the one
    # left is the best of one. Failed runs never rank.
    halving, _, _ = outcomes(url, exps, "halving")
    assert halving == {"good": "adopted", "lucky_null": "rejected at d2", "null": "rejected at d2",
                       "worse": "rejected at d2", "failed": "rejected at d2"}
    # fixed_t: the plain paired t-test on 3 slots at alpha 0.05. The lucky null's deltas (-0.001, +0.003, +0.002)
    # are no improvement; the win's (about -0.02, tight) are.
    fixed, result, ids = outcomes(url, exps, "fixed_t")
    assert fixed == {"good": "adopted", "lucky_null": "rejected at d2", "null": "rejected at d2",
                     "worse": "rejected at d2", "failed": "rejected at d2"}
    assert result[ids["good"]].runs == 6
    # The search's own null runs are noise measurements, not candidates.
    assert exps["noise"].id not in result and exps["baseline"].id not in result


def test_halving_always_promotes_someone_and_greedy_follows_single_runs(tmp_path):
    """An all-null pool: halving still sends its best 1/eta up, greedy every null with a lucky first slot, the
    fixed-n t-test none of these."""
    url = f"sqlite:///{tmp_path / 'nulls.db'}"
    base = Experiment(tweaks={}, tier="cpu")
    nulls = [Experiment(tweaks={}, tier="cpu", replica=r, name=f"null {r}") for r in range(1, 7)]
    first_slot = [2.3390, 2.3395, 2.3410, 2.3420, 2.3385, 2.3430]  # the baseline's is 2.3400: three below it
    with Store(url) as store:
        # An A/A run trains its nulls at the first rung only, and records so: adopted there means promoted there.
        sid = store.start_search("aa", tier="cpu", space="all", proposer="aa",
                                 config={"tier": "cpu", "seed_base": 0, "baseline_experiment_id": base.id,
                                         "rungs": ["d2"]})
        for exp in [base, *nulls]:
            store.record_experiment(exp.record(), search_id=sid)
        for slot, val in BASE.items():
            store.record_run(Run(base.id, "d2", base.seed(slot), "ok", val_bpb=val, search_id=sid))
        for exp, first in zip(nulls, first_slot):
            for slot, val in {0: first, 1: BASE[1] + 0.002, 2: BASE[2] - 0.001}.items():
                store.record_run(Run(exp.id, "d2", exp.seed(slot), "ok", val_bpb=val, search_id=sid))
            store.record_decision(Decision(exp.id, "d2", "reject", search_id=sid))
    with Store(url, read_only=True) as store:
        search = load(store, "aa")
    out = io.StringIO()
    tallies = report([search], ["ladder", "greedy", "halving", "fixed_t"], eta=3, out=out)
    assert (tallies["greedy"].promoted_first, tallies["greedy"].false_first, tallies["greedy"].nulls) == (3, 3, 6)
    assert tallies["halving"].promoted_first == 2 == tallies["halving"].false_first  # 6 // 3 of them, the best two
    assert tallies["fixed_t"].promoted_first == 0 and tallies["ladder"].promoted_first == 0
    assert tallies["greedy"].runs == 6 and tallies["fixed_t"].runs == 18
    assert tallies["greedy"].false_adopted == 3 and tallies["greedy"].untried == 0
    text = out.getvalue()
    assert "nulls at d2" in text and "null 5" in text


def test_the_command_line(recorded, capsys):
    url, _ = recorded
    assert main(["hand-made", "--db", url, "--rules", "greedy,fixed_t"]) == 0
    text = capsys.readouterr().out
    assert "search 'hand-made': tier cpu" in text and "untried at d4" in text and "ladder " not in text
    assert main(["nope", "--db", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: search 'nope': not in") and "hand-made" in err and "\n" not in err
    assert main(["hand-made", "--db", url, "--rules", "greedy,coinflip"]) == 2
    assert "--rules" in capsys.readouterr().err
    # An A/A run's name stands for its controls, in order.
    with Store(url) as store:
        for i in (2, 1):
            store.start_search(f"ctl-{i}of2", tier="cpu", space="all", proposer="aa", config={"tier": "cpu"})
    assert main(["ctl", "--db", url]) == 0
    text = capsys.readouterr().out
    assert 0 <= text.index("search 'ctl-1of2'") < text.index("search 'ctl-2of2'")
