""""Best", defined once (leaderboard/ranking.py), and the three places that name a search's best experiment -- the
terminal summary (`Search.best`), the agent's prompt (`History`) and the dashboard
(`leaderboard.views.search_summary`) -- naming the same one."""

import math
from types import SimpleNamespace

from experiments.catalog import load_recipe, load_tier
from harness.experiment import Experiment
from harness.ladder import Verdict
from harness.proposers.agent import History, SearchContext
from harness.search import Candidate, Search
from leaderboard import Decision, Store
from leaderboard.ranking import Standing, best, standings
from leaderboard.schema import NOISE_FLOOR_PROPOSER
from leaderboard.views import search_summary


def row(experiment_id, rung, mean_delta):
    return {"experiment_id": experiment_id, "from_rung": rung, "mean_delta": mean_delta}


def test_furthest_rung_first_then_the_lowest_mean_difference_there():
    rows = [row("a", "d2", -0.010), row("a", "d4", 0.002),     # promoted, a little worse at d4: still above b
            row("b", "d2", -0.020),                            # the best at d2, but stopped there
            row("c", "d2", -0.030), row("c", "d2", -0.001),    # one more seed moved it: the latest decision counts
            row("d", "d2", None), row("e", "d2", math.nan),    # no paired result: no standing
            row("f", "d9", -0.5),                              # a rung not in the ladder ranks below the first
            row("null", "d4", -0.9)]
    ranked = standings(rows, ["d2", "d4"], exclude={"null"})
    assert [s.experiment_id for s in ranked] == ["a", "b", "c", "f"]
    assert ranked[0] == Standing("a", "d4", 1, 0.002) and ranked[2].mean_delta == -0.001
    assert best(rows, ["d2", "d4"], exclude={"null"}) == ranked[0]
    assert best([], ["d2"]) is None
    # Worth the name "best": promoted past the first rung, or better than the baseline there.
    assert [s.beats_baseline() for s in ranked[:3]] == [True, True, True]
    assert not Standing("g", "d2", 0, 0.001).beats_baseline()


def test_the_summary_the_agent_and_the_dashboard_name_the_same_best(tmp_path):
    tier, recipe = load_tier("cpu"), load_recipe("baseline")
    store = Store(f"sqlite:///{tmp_path / 'lb.db'}")

    def experiment(tweaks, **kw):
        return Experiment(tweaks=tweaks, tier=tier.name, recipe=recipe.name, code_version="0123456789ab", **kw)

    baseline = experiment({}, proposer="baseline")
    search_id = store.start_search("s", tier="cpu", space="all", proposer="optuna",
                                   config={"rungs": ["d2", "d4"], "baseline_experiment_id": baseline.id})
    a, b, c = (experiment({"qk_scale": q}, proposer="optuna") for q in (0.9, 1.1, 1.2))
    lucky = experiment({}, proposer=NOISE_FLOOR_PROPOSER, replica=1)  # a null drawn low: noise, never the best
    for exp in (baseline, a, b, c, lucky):
        store.record_experiment(exp.record(), search_id=search_id)
    made = [(a, "d2", "promote", -0.004), (b, "d2", "reject", -0.009), (c, "d2", "more_seeds", -0.012),
            (c, "d2", "reject", -0.002), (a, "d4", "reject", 0.001), (lucky, "d4", "promote", -0.05),
            (baseline, "d2", "reject", -0.1)]
    verdicts: dict[str, dict[str, Verdict]] = {}
    for exp, rung, verdict, mean in made:
        store.record_decision(Decision(experiment_id=exp.id, from_rung=rung, verdict=verdict, search_id=search_id,
                                       mean_delta=mean, n=3))
        verdicts.setdefault(exp.id, {})[rung] = Verdict(verdict, {}, mean, None, None, 3, "")
    expected = [a.id, b.id, c.id]  # a reached d4 (worse there, still furthest); b beats c's latest -0.002 at d2

    dashboard = [x["experiment_id"] for x in search_summary(store, search_id)["best"]]
    context = SearchContext(name="s", search_id=search_id, tier=tier, recipe=recipe, baseline_id=baseline.id,
                            identity=lambda t, p: experiment(t).id)
    agent = [s.experiment_id for s in History(store, context).standings]
    searching = SimpleNamespace(tier=tier, candidates={
        e.id: Candidate(e, order=i, verdicts=verdicts[e.id]) for i, e in enumerate((a, b, c, lucky))})
    summary = Search.best(searching)
    assert dashboard == agent == expected and summary.experiment_id == expected[0]
    assert search_summary(store, search_id)["best"][0] == {"experiment_id": a.id, "rung": "d4", "mean_delta": 0.001,
                                                           "n": 3, "beats_baseline": True}
