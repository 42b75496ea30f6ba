"""The Streamlit dashboard (leaderboard/app.py and its pages), rendered with Streamlit's AppTest against
a seeded SQLite database, an empty one, a missing file and bad URLs.

`seed(url)` builds the database the browser test (tests/test_dashboard_browser.py) renders too.
"""

import hashlib
import json
import math
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from leaderboard import Decision, Entry, Experiment, Run, Store, Track, views
from leaderboard import dashboard_format as fmt

APP = Path(__file__).resolve().parents[1] / "leaderboard" / "app.py"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

BASE, SMEAR, BACKOUT, IDEA, LONE = "base00000001", "smear0000002", "backout00003", "idea00000004", "lone00000005"
PATCH = """--- a/model/gpt.py
+++ b/model/gpt.py
@@ -10,3 +10,4 @@
     x = self.embed(idx)
+    x = x + self.smear(x)
"""
RATIONALE = "Smearing the previous token's embedding into the current one gives attention a cheap bigram feature."
FALSIFICATION = "Rejected if d2 val_bpb does not drop by at least 0.01 on both seeds."

# val_bpb per (experiment, rung, seed): the smear candidate beats the baseline, backout does not.
VAL_BPB = {
    (BASE, "d2", 0): 2.00, (BASE, "d2", 1): 2.01, (SMEAR, "d2", 0): 1.95, (SMEAR, "d2", 1): 1.96,
    (BACKOUT, "d2", 0): 2.02, (BACKOUT, "d2", 1): 2.03,
    (BASE, "d4", 0): 1.80, (BASE, "d4", 1): 1.81, (SMEAR, "d4", 0): 1.75, (SMEAR, "d4", 1): 1.76,
}


def _config(rung: str, seed: int, tweaks: dict) -> dict:
    depth = int(rung[1:])
    return {"model": {"depth": depth, "n_embd": 64 * depth, "smear": bool(tweaks.get("smear")),
                      "backout": bool(tweaks.get("backout"))},
            "optim": {"matrix_lr": 0.02, "warmdown_ratio": 0.2}, "train": {"seed": seed, "tokens": 1_000_000}}


def _curve(final: float, n: int = 5) -> list[dict]:
    return [{"step": 20 * i, "tokens": 5120 * i, "elapsed_train_s": 3.0 * i, "train_loss": 3 * final + 0.5 * (n - i),
             "val_bpb": final + 0.1 * (n - 1 - i)} for i in range(n)]


SMEAR_WHY = ("better than the baseline beyond the 0.01 bpb floor: -0.0500 bpb vs the baseline on 2 seeds, p=0.003 < 0.05 "
             "(alpha 0.05 over up to 1 looks)")  # the ladder's sentence (harness/ladder.py); backout's predates reasons

def seed(url: str) -> dict:
    """A search with a baseline and three candidates (runs at two rungs and two seeds; one promoted, one
    rejected, one diverged), agent costs, a lone run outside any search, and two tracks with entries."""
    with Store(url) as store:
        search_id = store.start_search("cpu-search", tier="cpu", space="tweaks", proposer="agent",
                                       config={"rungs": ["d2", "d4"]})
        experiments = {
            BASE: Experiment(id=BASE, name="baseline", proposer="manual", code_version="0123456789abcdef0123",
                             created_at=T0),
            SMEAR: Experiment(id=SMEAR, name="smear", tweaks={"smear": True}, parent_id=BASE, proposer="agent",
                              rationale=RATIONALE, code_version="0123456789abcdef0123", patch=PATCH, created_at=T0,
                              extra={"falsification": FALSIFICATION, "agent": {
                                  "model": "claude-test", "input_tokens": 1200, "output_tokens": 300,
                                  "cost_usd": 0.0125}}),
            BACKOUT: Experiment(id=BACKOUT, name="backout", tweaks={"backout": True}, parent_id=BASE,
                                proposer="optuna", created_at=T0),
            IDEA: Experiment(id=IDEA, name="untested idea", tweaks={"value_embeds": 2}, proposer="agent", created_at=T0,
                             extra={"agent": {"model": "claude-test", "input_tokens": 800, "output_tokens": 200,
                                              "cost_usd": 0.0075}}),
        }
        for experiment in experiments.values():
            store.record_experiment(experiment, search_id=search_id)
        finished = T0
        for (exp_id, rung, seed_), val_bpb in VAL_BPB.items():
            finished += timedelta(minutes=10)
            store.record_run(Run(
                experiment_id=exp_id, rung=rung, seed=seed_, status="ok", depth=int(rung[1:]), world_size=1,
                started_at=finished - timedelta(minutes=5), finished_at=finished, val_bpb=val_bpb,
                core=0.05 if rung == "d4" else None, total_training_time=600.0 if rung == "d2" else 1800.0,
                time_to_target=450.0 if (exp_id, rung) == (SMEAR, "d4") else None,
                config=_config(rung, seed_, experiments[exp_id].tweaks), search_id=search_id), _curve(val_bpb))
        store.record_run(Run(experiment_id=IDEA, rung="d2", seed=0, status="diverged", depth=2, world_size=1,
                             started_at=finished, finished_at=finished + timedelta(minutes=1), reason="loss is NaN",
                             total_training_time=60.0, config=_config("d2", 0, {}), search_id=search_id))
        store.record_null_spread("cpu-search", "d2", "structural", 0.004, 3, BASE)
        store.record_null_spread("cpu-search", "d2", "parametric", 0.0002, 3, BASE)
        common = dict(search_id=search_id, baseline_experiment_id=BASE, n=2, alpha=0.05, min_effect=0.01,
                      noise_floor=0.004, kind="structural", spread=0.004, df=4.0, mde=0.0123)
        # Each decided just after the run that completed its seeds (smear's second d2 run finished at T0 + 40 min).
        store.record_decision(Decision(experiment_id=SMEAR, from_rung="d2", to_rung="d4", verdict="promote",
                                       deltas=[-0.05, -0.05], mean_delta=-0.05, std_error=0.001, p_value=0.003,
                                       reason=SMEAR_WHY, created_at=T0 + timedelta(minutes=41), **common))
        store.record_decision(Decision(experiment_id=BACKOUT, from_rung="d2", to_rung="d4", verdict="reject",
                                       deltas=[0.02, 0.02], mean_delta=0.02, std_error=0.001, p_value=0.97,
                                       created_at=T0 + timedelta(minutes=61), **common))
        store.record_run(Run(experiment_id=LONE, rung="d2", seed=0, status="ok", val_bpb=1.99, world_size=1,
                             finished_at=finished + timedelta(hours=1), config=_config("d2", 0, {"lr": 1}) | {"note": "x"}),
                         _curve(1.99), experiment=Experiment(id=LONE, name="lone run", proposer="manual", created_at=T0))

        store.record_track(Track(name="gpt2-speedrun", metric="core", target=0.256525, hardware="8xH100", depth=24,
                                 description="Time to GPT-2's CORE on one 8xH100 node."))
        store.record_entry(Entry(track="gpt2-speedrun", recipe="nanochat d24 reference", seeds=1,
                                 time_to_target_mean=10_800.0, metric_mean=0.2585, val_bpb=0.7466, is_record=True,
                                 source="nanochat README", created_at=T0))
        store.record_entry(Entry(track="gpt2-speedrun", recipe="smear d24", experiment_id=SMEAR, seeds=3,
                                 time_to_target_mean=9_720.0, time_to_target_std=90.0, metric_mean=0.2601,
                                 metric_std=0.0012, val_bpb=0.7412, p_value=0.004, is_record=True,
                                 code_version="0123456789abcdef0123", created_at=T0 + timedelta(days=1)))
        store.record_entry(Entry(track="gpt2-speedrun", recipe="backout d24", experiment_id=BACKOUT, seeds=2,
                                 time_to_target_mean=11_520.0, time_to_target_std=180.0, metric_mean=0.2571,
                                 metric_std=0.0008, created_at=T0 + timedelta(days=2)))
        store.record_entry(Entry(track="gpt2-speedrun", recipe="never reached the target", seeds=1,
                                 metric_mean=0.2400, created_at=T0 + timedelta(days=3)))
        store.record_track(Track(name="cpu-d4", metric="val_bpb", target=1.8))
        store.record_entry(Entry(track="cpu-d4", recipe="cpu smear", experiment_id=SMEAR, seeds=2,
                                 time_to_target_mean=450.0, time_to_target_std=12.0, metric_mean=1.755,
                                 metric_std=0.007, created_at=T0))
    return {"search_id": search_id}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'seeded.db'}"
    seed(url)
    return url


def render(monkeypatch, url: str, page: str | None = None, query: dict | None = None) -> AppTest:
    """The app rendered once on `url` (as $NANORESEARCH_DB), then on `page` with `query` params if given."""
    monkeypatch.setenv("NANORESEARCH_DB", url)
    at = AppTest.from_file(APP, default_timeout=60).run()
    if page is not None or query is not None:
        at.query_params.clear()
        at.query_params.update(query or {})
        if page is not None:
            at.switch_page(f"dashboard_{page}.py")
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The one dataframe on the page that has `column`."""
    frames = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(frames) == 1, f"{len(frames)} dataframes with a {column!r} column"
    return frames[0]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


# ------------------------------------------------------------------------------------------------ leaderboard

def test_leaderboard_ranks_entries_by_time_to_target(monkeypatch, seeded):
    at = render(monkeypatch, seeded)
    assert at.selectbox[0].value == "cpu-d4"  # tracks in name order; the first is shown
    at.selectbox[0].select("gpt2-speedrun").run()
    table = frame_with(at, "recipe")
    assert list(table["recipe"]) == ["smear d24", "nanochat d24 reference", "backout d24", "never reached the target"]
    assert "**Record to beat:** smear d24, 2.70 h" in [m.value for m in at.markdown]  # the fastest record entry
    assert list(table["#"].fillna(0)) == [1, 2, 3, 0]  # no time to target: no rank
    assert list(table["time to target (h)"]) == ["2.70 ± 0.03", "3.00", "3.20 ± 0.05", "—"]
    assert list(table["CORE"]) == ["0.2601 ± 0.0012", "0.2585", "0.2571 ± 0.0008", "0.2400"]
    assert list(table["val_bpb"]) == ["0.7412", "0.7466", "—", "—"]
    assert list(table["record"]) == ["★", "★", "", ""]
    assert list(table["source"]) == ["", "nanochat README", "", ""]
    assert list(table["code version"]) == ["0123456", "—", "—", "—"]
    assert list(table["date"]) == ["2026-03-02", "2026-03-01", "2026-03-03", "2026-03-04"]
    assert table["details"][0] == f"experiment?id={SMEAR}" and pd.isna(table["details"][1])
    assert at.query_params["track"] == "gpt2-speedrun"  # the URL names the shown track
    assert "CORE ≥ 0.256525" in " ".join(c.value for c in at.caption)


def test_leaderboard_track_from_query_param_in_minutes(monkeypatch, seeded):
    at = render(monkeypatch, seeded, query={"track": "cpu-d4"})
    table = frame_with(at, "recipe")
    assert list(table["recipe"]) == ["cpu smear"]
    assert list(table["time to target (min)"]) == ["7.50 ± 0.20"]  # 450 s ± 12 s
    assert list(table["val_bpb"]) == ["1.7550 ± 0.0070"]  # the track's metric is val_bpb: one column


def test_best_experiments_rank_by_the_mean_over_seeds_within_the_tracks_depth(monkeypatch, seeded):
    at = render(monkeypatch, seeded)  # track cpu-d4 has no depth: every depth, each on its own
    board = frame_with(at, "training time")
    assert list(board["depth"]) == ["d2"] * 4 + ["d4"] * 2  # the lone run has no depth: grouped by its rung, d2
    d2 = board[board["depth"] == "d2"]
    # One row per experiment and rung, ranked by the mean over its seeds, with n and the spread.
    assert list(d2["experiment"]) == ["smear", "lone run", "baseline", "backout"]
    assert list(d2["val_bpb"]) == ["1.9550 ± 0.0071", "1.9900", "2.0050 ± 0.0071", "2.0250 ± 0.0071"]
    assert list(d2["seeds"]) == [2, 1, 2, 2] and list(d2["#"]) == [1, 2, 3, 4]
    assert "untested idea" not in set(board["experiment"])  # diverged: no ok run to rank
    assert list(board[board["depth"] == "d4"]["experiment"]) == ["smear", "baseline"]
    assert any(h.value == "Best experiments by depth" for h in at.subheader)
    at.selectbox[0].select("gpt2-speedrun").run()  # a d24 track: only d24 runs, and there are none
    assert any(h.value == "Best experiments at d24" for h in at.subheader)
    assert any(i.value == "No finished runs at d24 yet." for i in at.info)
    assert not [d for d in at.dataframe if "training time" in d.value.columns]


def test_best_experiments_never_rank_a_searchs_nulls(monkeypatch, seeded, tmp_path):
    """A null is the baseline again, run to measure the noise: a lucky one must not top the table as if it were a
    change, whether it is the noise-floor replica or an A/A null replica."""
    import shutil
    db = tmp_path / "with-nulls.db"
    shutil.copyfile(seeded.removeprefix("sqlite:///"), db)
    url = f"sqlite:///{db}"
    with Store(url) as store:
        search_id = store.searches()[0]["id"]
        nulls = {"floor0000006": Experiment(id="floor0000006", name="null (init seed)", proposer="noise-floor",
                                            extra={"replica": 999}, created_at=T0),
                 "aanull000007": Experiment(id="aanull000007", name="null (A/A 1)", proposer="agent",
                                            extra={"replica": 1}, created_at=T0)}
        for i, (exp_id, experiment) in enumerate(nulls.items()):
            store.record_experiment(experiment, search_id=search_id)
            for seed_ in (0, 1):  # luckier than every change at d2
                store.record_run(Run(experiment_id=exp_id, rung="d2", seed=seed_, status="ok", depth=2, world_size=1,
                                     started_at=T0, finished_at=T0 + timedelta(minutes=5), val_bpb=1.90 + 0.01 * i,
                                     config=_config("d2", seed_, {}), search_id=search_id), _curve(1.90))
    board = frame_with(render(monkeypatch, url), "training time")
    d2 = board[board["depth"] == "d2"]
    assert list(d2["experiment"]) == ["smear", "lone run", "baseline", "backout"]
    assert list(d2["#"]) == [1, 2, 3, 4]
    # The same runs without the rule: the nulls would have ranked first and second.
    with Store(url) as store:
        unfiltered = fmt.best_runs_table(store.runs(status="ok"), {x: e.name for x, e in nulls.items()}, None)
    assert list(unfiltered[unfiltered["depth"] == "d2"]["experiment"])[:2] == ["null (init seed)", "null (A/A 1)"]


# ------------------------------------------------------------------------------------------------ search

def test_search_page_funnel_decisions_trials_and_agent_spend(monkeypatch, seeded):
    at = render(monkeypatch, seeded, page="search")
    assert at.selectbox[0].value == "cpu-search"
    funnel = frame_with(at, "promoted")
    assert funnel.to_dict("records") == [
        {"rung": "d2", "proposed": 3, "run": 4, "promoted": 1, "rejected": 1},  # run: the baseline too
        {"rung": "d4", "proposed": 1, "run": 2, "promoted": 0, "rejected": 0},  # the baseline runs there too
    ]
    spreads = frame_with(at, "pairs")
    assert [(r["rung"], r["kind"], r["pairs"], r["null spread"]) for r in spreads.to_dict("records")] == [
        ("d2", "parametric", 3, 0.0002), ("d2", "structural", 3, 0.004)]
    decisions = frame_with(at, "verdict")
    assert dict(zip(decisions["experiment"], decisions["verdict"])) == {"smear": "promote", "backout": "reject"}
    # Each decision in words first; the numbers above are one click away, in an expander.
    reasons = frame_with(at, "why")
    assert reasons.drop(columns=["details"]).to_dict("records") == [
        {"experiment": "smear", "rung": "d2", "decision": "promoted to d4", "why": SMEAR_WHY},
        {"experiment": "backout", "rung": "d2", "decision": "rejected", "why": fmt.NO_REASON}]
    assert [e.label for e in at.expander] == ["The numbers behind each decision"]
    smear = decisions[decisions["experiment"] == "smear"].iloc[0]
    assert (smear["n"], smear["mean delta"], smear["std error"], smear["p-value"]) == (2, -0.05, 0.001, 0.003)
    assert (smear["alpha"], smear["min effect"], smear["null spread"]) == (0.05, 0.01, 0.004)
    assert (smear["kind"], smear["MDE"], smear["df"]) == ("structural", 0.0123, 4.0)
    assert smear["deltas"] == "-0.0500, -0.0500" and smear["baseline"] == "baseline"
    assert smear["details"] == f"experiment?id={SMEAR}"

    found = metrics(at)
    assert (found["proposed"], found["runs finished"], found["ok runs"]) == ("3", "11 / 11", "10")
    assert found["training hours"] == "3.017"  # 6 d2 runs x 600 s + 4 d4 runs x 1800 s + the diverged 60 s
    assert found["device-hours"] == "0.850"  # wall time: 10 runs of 5 minutes + the diverged one's minute
    # agent spend: smear (1200 in, 300 out, $0.0125) + the untested idea (800 in, 200 out, $0.0075)
    assert (found["agent cost"], found["cost (USD)"]) == ("$0.02", "$0.02")
    assert (found["input tokens"], found["output tokens"], found["proposals by the agent"]) == ("2,000", "500", "2")
    per_model = frame_with(at, "cost_usd")
    assert per_model.to_dict("records") == [{"model": "claude-test", "experiments": 2, "input_tokens": 2000,
                                             "output_tokens": 500, "cost_usd": pytest.approx(0.02)}]

    trials = frame_with(at, "best_decided").iloc[::-1]  # shown newest first
    assert len(trials) == 11
    assert dict(zip(trials["experiment"], trials["proposer"])) == {
        "baseline": "manual", "smear": "agent", "backout": "optuna", "untested idea": "agent"}
    assert dict(zip(trials["experiment"], trials["role"])) == {
        "baseline": "baseline", "smear": "candidate", "backout": "candidate", "untested idea": "candidate"}
    d2 = trials[trials["rung"] == "d2"]
    assert list(d2["experiment"]) == ["baseline"] * 2 + ["smear"] * 2 + ["backout"] * 2 + ["untested idea"]
    # Best so far counts decided improvements only: smear's promotion (-0.05), from the run that completed it.
    assert d2["best_decided"].tolist() == pytest.approx([math.nan] * 3 + [-0.05] * 4, nan_ok=True)
    assert trials[trials["rung"] == "d4"]["best_decided"].isna().all()  # nothing decided at d4 yet
    assert list(trials["compute_hours"])[-1] == pytest.approx(51 / 60)  # the same compute, summed in finish order
    # The one definition of best (leaderboard/ranking.py): by the decisions' paired differences, the baseline never.
    best = frame_with(at, "mean d")
    assert best[["experiment", "rung", "seeds", "decision"]].to_dict("records") == [
        {"experiment": "smear", "rung": "d2", "seeds": 2, "decision": "promoted to d4"},
        {"experiment": "backout", "rung": "d2", "seeds": 2, "decision": "rejected"}]
    assert best["mean d"].tolist() == pytest.approx([-0.05, 0.02])

    charts = [chart_data(c) for c in at.get("vega_lite_chart")]
    assert len(charts) == 4  # runs over time, best by run, best by compute, funnel
    by_compute = next(c for c in charts if "compute_hours" in c.columns and "role" in c.columns
                      and c["best_decided"].notna().all())
    assert by_compute["rung"].unique().tolist() == ["d2"] and by_compute["best_decided"].tolist() == [-0.05] * 4
    # The runs coloured by role, over the baseline's mean and band per rung.
    runs_chart = next(c for c in at.get("vega_lite_chart") if len(c.proto.datasets) == 2)
    points, bands = (chart_data(runs_chart, i) for i in (0, 1))
    if "role" not in points.columns:
        points, bands = bands, points
    assert set(points["role"]) == {"baseline", "candidate"}
    assert bands[["rung", "baseline", "seeds"]].to_dict("records") == [
        {"rung": "d2", "baseline": pytest.approx(2.005), "seeds": 2}, {"rung": "d4", "baseline": pytest.approx(1.805), "seeds": 2}]
    assert (bands["high"] - bands["low"]).tolist() == pytest.approx([2 * 0.00707107] * 2, rel=1e-4)


def test_search_page_offers_the_report_card_and_results_tsv(monkeypatch, seeded):
    """The downloads are the files `python -m leaderboard export` writes (tests/test_search.py checks those against
    a real search's decisions)."""
    from leaderboard import Store
    from leaderboard.search_export import SearchExport, report_card, results_tsv
    at = render(monkeypatch, seeded, page="search")
    buttons = at.get("download_button")
    assert [b.proto.label for b in buttons] == ["report.md", "results.tsv"]
    export = SearchExport(Store(seeded, read_only=True), "cpu-search")
    rows = results_tsv(export).splitlines()
    assert rows[0].split("\t")[:4] == ["experiment", "role", "change", "rung"]
    smear = next(r.split("\t") for r in rows if r.startswith(SMEAR) and "\td2\t" in r)
    assert smear[1:4] == ["candidate", "smear", "d2"] and float(smear[8]) == -0.05 and smear[-1] == SMEAR_WHY
    card = report_card(export)
    assert card.startswith("# Search report: cpu-search\n") and f"(`{SMEAR}`), mean paired difference -0.0500" in card
    assert "| `smear` | d2 | promoted to d4 | " in card


def add_lucky_baseline_seed(url: str) -> None:
    """A third baseline seed at d2, far below everything, finished after smear's promotion."""
    with Store(url) as store:
        search_id = store.find_search("cpu-search")["id"]
        store.record_run(Run(experiment_id=BASE, rung="d2", seed=2, status="ok", val_bpb=1.00, world_size=1,
                             started_at=T0 + timedelta(minutes=44), finished_at=T0 + timedelta(minutes=45),
                             search_id=search_id))


def test_best_so_far_does_not_move_for_a_lucky_baseline_seed(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'lucky.db'}"
    seed(url)
    add_lucky_baseline_seed(url)
    at = render(monkeypatch, url, page="search", query={"search": "cpu-search"})
    runs = frame_with(at, "best_decided").iloc[::-1]
    d2 = runs[runs["rung"] == "d2"]
    assert d2["val_bpb"].min() == 1.00  # a best-so-far of raw val_bpb would have jumped to the lucky seed
    assert d2["best_decided"].tolist() == pytest.approx([math.nan] * 3 + [-0.05] * 5, nan_ok=True)
    lucky = d2[d2["val_bpb"] == 1.00]
    assert lucky["role"].tolist() == ["baseline"] and lucky["best_decided"].tolist() == [-0.05]


def test_a_change_better_on_average_but_rejected_is_never_called_a_win(monkeypatch, tmp_path):
    from leaderboard.search_export import SearchExport, report_card
    url = f"sqlite:///{tmp_path / 'near.db'}"
    seed(url)
    with Store(url) as store:  # the untested idea, tried after all: -0.07 on average, but within the noise
        search_id = store.find_search("cpu-search")["id"]
        store.record_decision(Decision(experiment_id=IDEA, from_rung="d2", verdict="reject", search_id=search_id,
                                       baseline_experiment_id=BASE, mean_delta=-0.07, std_error=0.06, p_value=0.2,
                                       n=5, reason="not shown better at the seed cap"))
    at = render(monkeypatch, url, page="search", query={"search": "cpu-search"})
    best = frame_with(at, "mean d")
    assert best[["experiment", "decision"]].to_dict("records")[:2] == [
        {"experiment": "untested idea", "decision": "rejected"}, {"experiment": "smear", "decision": "promoted to d4"}]
    card = report_card(SearchExport(Store(url, read_only=True), "cpu-search"))
    assert "Best: `untested idea`" in card and "It was not promoted: the difference is within the noise" in card


def add_running_job(url: str) -> None:
    """A d4 run of the untested idea in progress, with the live progress its search recorded."""
    with Store(url) as store:
        search_id = store.find_search("cpu-search")["id"]
        store.record_run(Run(experiment_id=IDEA, rung="d4", seed=0, status="running", depth=4, world_size=1,
                             started_at=datetime.now(UTC) - timedelta(minutes=3), search_id=search_id))
        store.record_progress(IDEA, "d4", 0, steps=120, tok_per_s=1712.0, val_bpb=2.4133)


def test_search_page_shows_running_jobs_with_their_live_progress(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    seed(url)
    at = render(monkeypatch, url, page="search", query={"search": "cpu-search"})
    assert not any(h.value.startswith("Running now") for h in at.subheader)  # nothing running, nothing shown
    add_running_job(url)
    at.run()  # the section reads fresh (uncached): the next rerun, or its own refresh, shows the job
    assert any(h.value == "Running now (1)" for h in at.subheader)
    live = frame_with(at, "val_bpb so far")
    assert live[["experiment", "rung", "seed", "step", "val_bpb so far", "tok/s"]].to_dict("records") == [
        {"experiment": "untested idea", "rung": "d4", "seed": 0, "step": 120, "val_bpb so far": 2.4133, "tok/s": 1712.0}]
    assert live["running for"].tolist() == ["3.00 min"]


def add_optuna_study(url: str, trials: int = 8) -> None:
    """The search's Optuna study, as harness.search keeps it in the same database: three knobs that vary."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="nanoresearch:cpu-search", storage=url, direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(trials):
        trial = study.ask()
        lr = trial.suggest_float("matrix_lr", 0.005, 0.08, log=True)
        smear = trial.suggest_categorical("smear", [True, False])
        trial.suggest_int("n_kv_head", 1, 4)
        study.tell(trial, -abs(lr - 0.02) * 10 + (0.01 if smear else 0.0))
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # a failed trial: not plotted


def test_search_page_draws_optunas_plots_of_the_study(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    seed(url)
    add_optuna_study(url)
    at = render(monkeypatch, url, page="search", query={"search": "cpu-search"})
    assert any(h.value == "Optuna's view of the study" for h in at.subheader)
    charts = at.get("plotly_chart")
    assert len(charts) == 3
    specs = [json.loads(c.proto.spec) for c in charts]
    titles = [s["layout"]["title"]["text"] for s in specs]
    assert titles == ["Hyperparameter Importances", "Parallel Coordinate Plot", "Slice Plot"]
    importance = specs[0]["data"][0]
    assert sorted(importance["y"]) == ["matrix_lr", "n_kv_head", "smear"]  # every knob that varied
    assert any("8 finished trials" in c.value for c in at.caption)


WAITING = "wait00000006"
SMEAR_RULE = "promoted at d2: mean delta -0.0500 beat the baseline beyond noise"  # harness/hypotheses.py's sentences
BACKOUT_RULE = "rejected at d2: mean delta +0.0200 is worse by at least its MDE 0.0123"
IDEA_RULE = "not measured at d2: a candidate run failed: loss is NaN"


def add_ledger(url: str) -> dict[str, int]:
    """seed()'s search's hypothesis ledger as harness.search records and judges it (one claim still pending, on a
    new proposal), and insights of its tier and space: two active, one superseded; another tier's one besides.
    Returns the hypotheses' ids by experiment."""
    with Store(url) as store:
        sid = store.find_search("cpu-search")["id"]
        store.record_experiment(Experiment(id=WAITING, name="waiting idea", tweaks={"n_kv_head": 2}, proposer="agent",
                                           created_at=T0), search_id=sid)
        ids = {x: store.record_hypothesis(sid, x, claim, falsification) for x, claim, falsification in [
            (SMEAR, RATIONALE, FALSIFICATION), (BACKOUT, "Backing out the residual helps.", None),
            (IDEA, "Value embeddings help.", "Rejected if worse at d2."), (WAITING, "Fewer kv heads cost nothing.", None)]}
        common = {"rung": "d2", "rung_index": 0, "mde": 0.0123, "n": 2, "rungs_decided": ["d2"]}
        store.resolve_hypothesis(sid, SMEAR, "supported", {**common, "verdict": "promote", "mean_delta": -0.05,
                                                           "p_value": 0.003, "compute_multiplier": 1.4, "rule": SMEAR_RULE})
        store.resolve_hypothesis(sid, BACKOUT, "refuted", {**common, "verdict": "reject", "mean_delta": 0.02,
                                                           "p_value": 0.97, "compute_multiplier": 0.8, "rule": BACKOUT_RULE})
        store.resolve_hypothesis(sid, IDEA, "failed", {**common, "verdict": "reject", "mean_delta": None, "mde": None,
                                                       "rule": IDEA_RULE})
        store.record_insights("cpu", "tweaks", sid, [{"text": "An earlier take.", "hypotheses": [ids[SMEAR]]}])
        store.record_insights("cpu", "tweaks", sid, [  # supersedes the earlier take
            {"text": "Smear lowers d2 val_bpb by 0.05.", "hypotheses": [ids[SMEAR]]},
            {"text": "Backout *hurts* at d2.", "hypotheses": [ids[BACKOUT], ids[IDEA]]}])
        store.record_insights("gpu", "tweaks", None, [{"text": "Another tier's insight.", "hypotheses": []}])
    return ids


def test_search_page_shows_the_hypothesis_ledger(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    seed(url)
    ids = add_ledger(url)
    at = render(monkeypatch, url, page="search", query={"search": "cpu-search"})
    assert any(h.value == "Hypothesis ledger" for h in at.subheader)
    assert "1 supported, 1 refuted, 1 failed, 0 inconclusive, 1 pending" in [c.value for c in at.caption]
    ledger = frame_with(at, "claim")
    # Decided first (supported, refuted, failed), pending last; each with the numbers its decision judged it on.
    assert ledger.drop(columns=["mean delta", "MDE", "compute x"]).to_dict("records") == [
        {"#": ids[SMEAR], "status": "supported", "experiment": "smear", "claim": RATIONALE,
         "falsification": FALSIFICATION, "rung": "d2", "rule": SMEAR_RULE, "details": f"experiment?id={SMEAR}"},
        {"#": ids[BACKOUT], "status": "refuted", "experiment": "backout", "claim": "Backing out the residual helps.",
         "falsification": "—", "rung": "d2", "rule": BACKOUT_RULE, "details": f"experiment?id={BACKOUT}"},
        {"#": ids[IDEA], "status": "failed", "experiment": "untested idea", "claim": "Value embeddings help.",
         "falsification": "Rejected if worse at d2.", "rung": "d2", "rule": IDEA_RULE, "details": f"experiment?id={IDEA}"},
        {"#": ids[WAITING], "status": "pending", "experiment": "waiting idea", "claim": "Fewer kv heads cost nothing.",
         "falsification": "—", "rung": "—", "rule": "—", "details": f"experiment?id={WAITING}"}]
    assert ledger["mean delta"].tolist() == pytest.approx([-0.05, 0.02, math.nan, math.nan], nan_ok=True)
    assert ledger["MDE"].tolist() == pytest.approx([0.0123, 0.0123, math.nan, math.nan], nan_ok=True)
    assert ledger["compute x"].tolist() == pytest.approx([1.4, 0.8, math.nan, math.nan], nan_ok=True)


def insight_form(at: AppTest, number: int) -> tuple:
    """The text area of the page's insight `number` and its form's Save and Retire buttons."""
    [text] = [t for t in at.text_area if t.label == f"Insight {number}"]
    buttons = {b.label: b for b in at.button if b.form_id == text.form_id}
    return text, buttons["Save insight"], buttons["Retire insight"]


def test_insights_of_the_tier_and_space_are_edited_and_retired_on_the_search_page(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'insights.db'}"
    seed(url)
    ids = add_ledger(url)
    at = render(monkeypatch, url, page="search", query={"search": "cpu-search"})
    # The active ones of tier cpu, space tweaks, numbered, shown as written (no Markdown): not the superseded one,
    # not another tier's.
    assert [(t.label, t.value) for t in at.text_area] == [
        ("Insight 1", "Smear lowers d2 val_bpb by 0.05."), ("Insight 2", "Backout *hurts* at d2.")]
    updated = fmt.date(Store(url).insights("cpu", "tweaks")[0]["updated_at"])
    captions = [c.value for c in at.caption]
    assert f"cites #{ids[SMEAR]} smear (supported) · by agent · updated {updated}" in captions
    assert f"cites #{ids[BACKOUT]} backout (refuted), #{ids[IDEA]} untested idea (failed) · by agent · updated {updated}" \
        in captions
    assert [e.label for e in at.expander if "insights" in e.label] == ["Retired and superseded insights (1)"]
    assert frame_with(at, "insight")[["status", "insight"]].to_dict("records") == [
        {"status": "superseded", "insight": "An earlier take."}]

    text, save, _ = insight_form(at, 1)
    text.set_value("  Smear lowers val_bpb at d2 and d4.  ")
    save.click().run()
    assert not at.exception and not at.error
    [first, second] = Store(url).insights("cpu", "tweaks")
    assert (first["text"], first["author"], first["status"]) == ("Smear lowers val_bpb at d2 and d4.", "user", "active")
    assert (second["text"], second["author"]) == ("Backout *hurts* at d2.", "agent")  # the other one untouched
    assert [t.value for t in at.text_area if t.label == "Insight 1"] == [first["text"]]  # shown as saved
    assert any(c.value.endswith(f"by user · updated {fmt.date(first['updated_at'])}") for c in at.caption)

    text, save, _ = insight_form(at, 2)  # emptied: refused, with the reason, and nothing written
    text.set_value("   ")
    save.click().run()
    assert [e.value for e in at.error] == [
        "Not saved: insight text '': expected a non-empty string (retire it instead)"]
    assert Store(url).insights("cpu", "tweaks")[1]["text"] == "Backout *hurts* at d2."

    _, _, retire = insight_form(at, 2)
    retire.click().run()
    assert not at.exception and not at.error
    assert [i["text"] for i in Store(url).insights("cpu", "tweaks")] == ["Smear lowers val_bpb at d2 and d4."]
    assert [i["status"] for i in Store(url).insights("cpu", "tweaks", status="retired")] == ["retired"]
    assert [t.label for t in at.text_area] == ["Insight 1"]  # gone from the active list ...
    # ... into the earlier ones, newest first
    assert [e.label for e in at.expander if "insights" in e.label] == ["Retired and superseded insights (2)"]
    assert frame_with(at, "insight")[["status", "insight"]].to_dict("records") == [
        {"status": "retired", "insight": "Backout *hurts* at d2."}, {"status": "superseded", "insight": "An earlier take."}]


def test_search_page_without_runs_or_agent(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    with Store(url) as store:
        search_id = store.start_search("plain", proposer="optuna")
        store.record_experiment(Experiment(id="e1", name="only", proposer="optuna"), search_id=search_id)
    at = render(monkeypatch, url, page="search")
    assert metrics(at)["agent cost"] == "—"
    assert any("No agent usage recorded" in c.value for c in at.caption)
    assert any("No finished runs yet" in i.value for i in at.info)
    assert any("No promotion decisions yet." in i.value for i in at.info)
    captions = " ".join(c.value for c in at.caption)
    assert "the ledger fills as its decisions judge it" in captions and not at.text_area
    assert "every `--insights-every K` decisions and at the end of a search" in captions


def test_promotions_show_the_estimate_that_promoted_them_beside_the_next_rungs_replication(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'curse.db'}"
    with Store(url) as store:
        search_id = store.start_search("curse", proposer="optuna", config={"rungs": ["d2", "d4"]})
        for eid, name in (("lucky", "lucky win"), ("fresh", "just promoted"), ("nope", "rejected")):
            store.record_experiment(Experiment(id=eid, name=name, proposer="optuna"), search_id=search_id)
        common = dict(search_id=search_id, alpha=0.05, min_effect=0.0, noise_floor=0.001)
        for eid, rung, to, verdict, mean, se, n in [
                ("lucky", "d2", "d4", "more_seeds", -0.006, 0.003, 3),  # an earlier look at d2: not the promotion
                ("lucky", "d2", "d4", "promote", -0.004, 0.001, 4),
                ("lucky", "d4", None, "more_seeds", -0.001, 0.0015, 3),
                ("fresh", "d2", "d4", "promote", -0.003, 0.001, 3),
                ("nope", "d2", "d4", "reject", 0.002, 0.001, 3)]:
            store.record_decision(Decision(experiment_id=eid, from_rung=rung, to_rung=to, verdict=verdict,
                                           mean_delta=mean, std_error=se, n=n, **common))
    at = render(monkeypatch, url, page="search")
    table = frame_with(at, "estimate that promoted it")
    assert table[["experiment", "promoted at", "estimate that promoted it", "replicated at", "replication",
                  "replication verdict"]].to_dict("records") == [
        {"experiment": "lucky win", "promoted at": "d2", "estimate that promoted it": "-0.0040 ± 0.0010 (n=4)",
         "replicated at": "d4", "replication": "-0.0010 ± 0.0015 (n=3)", "replication verdict": "more_seeds"},
        {"experiment": "just promoted", "promoted at": "d2", "estimate that promoted it": "-0.0030 ± 0.0010 (n=3)",
         "replicated at": "d4", "replication": "—", "replication verdict": "not yet decided"}]
    assert table["kept"].tolist()[0] == pytest.approx(0.25) and pd.isna(table["kept"].tolist()[1])
    at = render(monkeypatch, url, page="experiment", query={"id": "lucky"})
    kept = frame_with(at, "estimate that promoted it")
    assert kept["kept"].tolist() == [pytest.approx(0.25)] and kept["replicated at"].tolist() == ["d4"]


def test_a_patched_runs_sealed_score_and_a_caught_mismatch_show_on_the_experiment_page(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'sealed.db'}"
    with Store(url) as store:
        search_id = store.start_search("sealed", proposer="agent")
        store.record_experiment(Experiment(id="p1", name="halves its loss", proposer="agent", patch=PATCH),
                                search_id=search_id)
        sealed = {"val_bpb": 3.80, "causal": True, "sandboxed": True}
        store.record_run(Run(experiment_id="p1", rung="d1", seed=0, status="metric_mismatch", val_bpb=3.80,
                             reason="it reported val_bpb 1.900000, the sealed re-score gives 3.800000 (tolerance 0.0001)",
                             sealed={**sealed, "reported_val_bpb": 1.90}, finished_at=T0, search_id=search_id))
        store.record_run(Run(experiment_id="p1", rung="d1", seed=1, status="ok", val_bpb=3.70,
                             sealed={**sealed, "val_bpb": 3.70, "reported_val_bpb": 3.70000001, "sandboxed": False},
                             finished_at=T0, search_id=search_id))
    at = render(monkeypatch, url, page="experiment", query={"id": "p1"})
    runs = frame_with(at, "reported val_bpb")
    assert runs[["seed", "status", "val_bpb", "reported val_bpb", "sealed"]].to_dict("records") == [
        {"seed": 0, "status": "metric_mismatch", "val_bpb": 3.80, "reported val_bpb": 1.90, "sealed": "sealed, sandboxed"},
        {"seed": 1, "status": "ok", "val_bpb": 3.70, "reported val_bpb": 3.70000001, "sealed": "sealed, no sandbox"}]
    assert "the sealed re-score gives 3.800000" in runs["reason"][0]
    at = render(monkeypatch, url, page="runs", query={"experiment": "p1"})
    assert not at.exception


def test_search_page_when_every_run_failed(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'failed.db'}"
    with Store(url) as store:
        search_id = store.start_search("doomed")
        store.record_run(Run(experiment_id="e1", rung="d2", seed=0, status="diverged", finished_at=T0,
                             search_id=search_id), experiment=Experiment(id="e1", name="nan", proposer="optuna"))
    at = render(monkeypatch, url, page="search")
    assert any("No decision with a paired result yet" in c.value for c in at.caption)
    assert len(at.get("vega_lite_chart")) == 1  # the funnel only: no val_bpb to draw
    assert frame_with(at, "best_decided")[["experiment", "status"]].to_dict("records") == [
        {"experiment": "nan", "status": "diverged"}]


@pytest.mark.postgres
def test_leaderboard_and_search_pages_on_postgresql(monkeypatch):
    from tests.test_store import PG_URL, REQUIRE_PG, pg_schema

    if not PG_URL:
        if REQUIRE_PG:
            pytest.fail("NANORESEARCH_REQUIRE_PG=1 but NANORESEARCH_TEST_PG_URL is not set (source scripts/ci_postgres.sh)")
        pytest.skip("no PostgreSQL: set NANORESEARCH_TEST_PG_URL (source scripts/ci_postgres.sh)")
    with pg_schema(PG_URL) as url:
        seed(url)
        at = render(monkeypatch, url, query={"track": "gpt2-speedrun"})
        assert frame_with(at, "recipe")["recipe"].tolist()[:2] == ["smear d24", "nanochat d24 reference"]
        at = render(monkeypatch, url, page="search")
        assert frame_with(at, "promoted")["run"].tolist() == [4, 2]
        assert set(frame_with(at, "verdict")["verdict"]) == {"promote", "reject"}


# ------------------------------------------------------------------------------------------------ runs

def chart_data(element, dataset: int = 0) -> pd.DataFrame:
    """The data a st.*_chart element carries (Arrow IPC in its proto); a layered chart has one per dataset."""
    proto = element.proto
    data = proto.datasets[dataset].data.data if proto.datasets else proto.data.data
    return pa.ipc.open_stream(data).read_all().to_pandas()


def test_runs_page_curves_filters_and_baseline_diff(monkeypatch, seeded):
    at = render(monkeypatch, seeded, page="runs", query={"experiment": SMEAR})
    table = frame_with(at, "training time (s)")
    assert list(zip(table["rung"], table["seed"])) == [("d2", 0), ("d2", 1), ("d4", 0), ("d4", 1)]
    assert table["val_bpb"].tolist() == [1.95, 1.96, 1.75, 1.76]
    curves = chart_data(at.get("vega_lite_chart")[0])
    assert curves["run"].nunique() == 4 and curves["step"].max() == 80
    final = curves[curves["step"] == 80]
    rung_seed = final["run"].map(lambda label: " · ".join(label.split(" · ")[1:3]))
    assert dict(zip(rung_seed, final["val_bpb"])) == {"d2 · seed 0": 1.95, "d2 · seed 1": 1.96,
                                                      "d4 · seed 0": 1.75, "d4 · seed 1": 1.76}

    # The first run (d2 seed 0) against the search's baseline at d2 seed 0: only the tweak differs.
    diff = frame_with(at, "key")
    assert diff.to_dict("records") == [{"key": "model.smear", "baseline": "false", "run": "true"}]
    assert any("same rung and seed" in c.value and "baseline · d2 · seed 0" in c.value for c in at.caption)

    run_box = next(s for s in at.selectbox if s.label == "Run")
    d4_seed1 = next(r for r in run_box.options if "d4 · seed 1" in r)
    run_box.set_value(int(d4_seed1.split()[0][1:])).run()
    assert any("baseline · d4 · seed 1" in c.value for c in at.caption)
    assert frame_with(at, "key")["key"].tolist() == ["model.smear"]

    at.segmented_control[0].set_value("tokens").run()
    curves = chart_data(at.get("vega_lite_chart")[0])
    assert "tokens" in curves.columns and curves["tokens"].max() == 4 * 5120


def test_runs_page_status_filter_and_picked_baseline(monkeypatch, seeded):
    at = render(monkeypatch, seeded, page="runs")
    at.multiselect[0].set_value(["diverged"]).run()
    table = frame_with(at, "training time (s)")
    assert table[["experiment", "status", "reason"]].to_dict("records") == [
        {"experiment": "untested idea", "status": "diverged", "reason": "loss is NaN"}]
    assert len(at.get("vega_lite_chart")) == 0  # a diverged run without points: no curve
    assert any("no val_bpb points" in i.value for i in at.info)

    # A run outside any search has no automatic baseline: the user picks one.
    at.multiselect[0].set_value([]).run()
    run_box = next(s for s in at.selectbox if s.label == "Run")
    lone = next(r for r in run_box.options if "lone run" in r)
    run_box.set_value(int(lone.split()[0][1:])).run()
    assert any("belongs to no search" in c.value for c in at.caption)
    compare = next(s for s in at.selectbox if s.label == "Compare with")
    base_d2_0 = next(r for r in compare.options if "baseline · d2 · seed 0" in r)
    compare.set_value(int(base_d2_0.split()[0][1:])).run()
    assert frame_with(at, "key").to_dict("records") == [
        {"key": "note", "baseline": "—", "run": '"x"'}]


# ------------------------------------------------------------------------------------------------ experiment

def test_experiment_page_from_query_param(monkeypatch, seeded):
    at = render(monkeypatch, seeded, page="experiment", query={"id": SMEAR})
    assert at.title[0].value == "smear"
    assert "proposed by agent" in at.caption[0].value and "code version 0123456789abcdef0123" in at.caption[0].value
    text = [m.value for m in at.markdown]
    assert RATIONALE in text and FALSIFICATION in text
    assert [c.value for c in at.code] == [PATCH.rstrip("\n")] and at.code[0].language == "diff"
    assert metrics(at) == {"model": "claude-test", "input tokens": "1,200", "output tokens": "300",
                           "cost (USD)": "$0.0125"}
    assert frame_with(at, "knob").to_dict("records") == [{"knob": "smear", "value": "true"}]
    runs = frame_with(at, "training time (s)")
    assert list(zip(runs["rung"], runs["seed"], runs["status"])) == [("d2", 0, "ok"), ("d2", 1, "ok"),
                                                                     ("d4", 0, "ok"), ("d4", 1, "ok")]
    assert runs["time to target (s)"].tolist()[2:] == [450.0, 450.0]
    assert f"**d2: promoted to d4.** {fmt.markdown_literal(fmt.sentence(SMEAR_WHY))}" in text  # the reason, in words
    decisions = frame_with(at, "verdict")
    assert decisions[["from", "to", "verdict", "p-value"]].to_dict("records") == [
        {"from": "d2", "to": "d4", "verdict": "promote", "p-value": 0.003}]
    assert any(link.value == f"parent: baseline ({BASE})" for link in at.get("page_link"))


def test_experiment_page_says_how_each_search_judged_its_hypothesis(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    seed(url)
    add_ledger(url)
    text = [m.value for m in render(monkeypatch, url, page="experiment", query={"id": BACKOUT}).markdown]
    assert f"**refuted** in search {fmt.markdown_literal('cpu-search')}: {fmt.markdown_literal(BACKOUT_RULE)}" in text
    text = [m.value for m in render(monkeypatch, url, page="experiment", query={"id": WAITING}).markdown]
    assert f"**pending** in search {fmt.markdown_literal('cpu-search')}: not decided yet" in text


def test_experiment_page_compares_both_arms_seed_by_seed(monkeypatch, seeded):
    at = render(monkeypatch, seeded, page="experiment", query={"id": SMEAR})
    pairs = frame_with(at, "candidate steps")
    assert pairs["seed"].tolist() == [0, 1]  # the top rung both ran (d4) first
    assert pairs["candidate val_bpb"].tolist() == [1.75, 1.76] and pairs["baseline val_bpb"].tolist() == [1.80, 1.81]
    assert pairs["delta"].tolist() == pytest.approx([-0.05, -0.05])
    [chart] = [c for c in at.get("vega_lite_chart") if len(c.proto.datasets) == 2]
    frames = [chart_data(chart, i) for i in (0, 1)]
    seeds = next(f for f in frames if "line" in f.columns)
    band = next(f for f in frames if "mean" in f.columns)
    assert sorted(set(seeds["line"])) == ["baseline seed 0", "baseline seed 1", "candidate seed 0", "candidate seed 1"]
    last = band[band["step"] == band["step"].max()].set_index("arm")
    assert last.loc["candidate", "mean"] == pytest.approx(1.755) and last.loc["baseline", "mean"] == pytest.approx(1.805)
    assert last.loc["candidate", "high"] - last.loc["candidate", "low"] == pytest.approx(2 * 0.00707107, rel=1e-4)
    at.selectbox(key="compare_rung").set_value("d2").run()
    assert frame_with(at, "candidate steps")["delta"].tolist() == pytest.approx([-0.05, -0.05])


def test_notes_and_tags_are_saved_and_shown(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'notes.db'}"
    seed(url)
    at = render(monkeypatch, url, page="experiment", query={"id": SMEAR})
    [notes] = [t for t in at.text_area if t.label == "Notes"]
    [tags] = [t for t in at.text_input if t.label == "Tags"]
    notes.set_value("Helps at d2 *and* d4; try with backout next.")
    tags.set_value("keep, smear ,, keep")
    next(b for b in at.button if b.label == "Save notes").click().run()
    assert not at.exception and not at.error
    saved = Store(url).experiment(SMEAR)
    assert saved["notes"] == "Helps at d2 *and* d4; try with backout next." and saved["tags"] == ["keep", "smear"]
    # Shown after the save, and to the next visitor; other experiments keep none.
    assert [t.value for t in at.text_area if t.label == "Notes"] == [saved["notes"]]
    assert any(":blue-badge[keep]" in m.value and ":blue-badge[smear]" in m.value for m in at.markdown)
    again = render(monkeypatch, url, page="experiment", query={"id": SMEAR})
    assert [t.value for t in again.text_input if t.label == "Tags"] == ["keep, smear"]
    assert Store(url).experiment(BACKOUT)["notes"] is None


def test_experiment_page_unknown_id_and_baseline(monkeypatch, seeded):
    at = render(monkeypatch, seeded, page="experiment", query={"id": "nope"})
    assert any("No experiment with id 'nope'" in w.value for w in at.warning)
    at.selectbox[0].set_value(BASE).run()
    assert at.title[0].value == "baseline"
    assert any("None: this is the baseline recipe." in c.value for c in at.caption)
    assert any("No ladder decisions" in c.value for c in at.caption)
    assert not at.code  # no patch
    assert "model" not in metrics(at)  # no agent section


# ------------------------------------------------------------------------------------------------ empty / bad

PAGES = [None, "search", "runs", "experiment"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_an_empty_database(monkeypatch, tmp_path, page):
    path = tmp_path / "empty.db"
    Store(f"sqlite:///{path}").close()
    at = render(monkeypatch, f"sqlite:///{path}", page=page)
    assert not at.error and not at.dataframe
    assert len(at.info) == 1 and "yet" in at.info[0].value, [i.value for i in at.info]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_a_missing_file_creates_nothing(monkeypatch, tmp_path, page):
    path = tmp_path / "not-yet.db"
    at = render(monkeypatch, f"sqlite:///{path}", page=page)
    assert not at.error
    assert [i.value for i in at.info] == [
        f"No database at `{path}` yet: it is created by the first recorded run "
        "(`python -m harness.search`, or `python -m leaderboard ingest RUN_DIR`)."]
    assert list(tmp_path.iterdir()) == []


def test_a_database_without_tables_stays_untouched(monkeypatch, tmp_path):
    path = tmp_path / "blank.db"
    path.touch()
    at = render(monkeypatch, f"sqlite:///{path}", page="runs")
    assert [i.value for i in at.info] == ["The database has no leaderboard tables yet: nothing has been recorded in it."]
    assert path.stat().st_size == 0


def test_rendering_every_page_never_writes(monkeypatch, tmp_path):
    path = tmp_path / "seeded.db"
    seed(f"sqlite:///{path}")
    add_ledger(f"sqlite:///{path}")  # the ledger and the insights, editable on the Search page, are read only too
    before = sha256(path)
    with Store(f"sqlite:///{path}") as store:
        counts = store.counts()
    for page, query in [(None, {}), ("search", {}), ("runs", {}), ("experiment", {"id": SMEAR})]:
        render(monkeypatch, f"sqlite:///{path}", page=page, query=query)
    assert sha256(path) == before
    with Store(f"sqlite:///{path}") as store:
        assert store.counts() == counts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("url, message", [
    ("mysql://me@db/lb", "unsupported backend 'mysql'"),
    ("not a url", "database URL 'not a url'"),
    ("postgresql://nobody@127.0.0.1:{port}/nothing", "cannot open database postgresql+psycopg2://nobody@127.0.0.1:"),
])
@pytest.mark.parametrize("page", PAGES)
def test_bad_url_is_one_error_line(monkeypatch, url, message, page):
    at = render(monkeypatch, url.format(port=free_port()), page=page)
    assert len(at.error) == 1, [e.value for e in at.error]
    error = at.error[0].value
    assert error.startswith("Cannot read the database: ") and message in error and "\n" not in error
    assert not at.dataframe


def test_sidebar_switches_database(monkeypatch, seeded, tmp_path):
    at = render(monkeypatch, f"sqlite:///{tmp_path / 'nothing-here.db'}")
    assert at.info and not at.dataframe
    at.text_input(key="db_url").set_value(seeded).run()
    assert frame_with(at, "recipe")["recipe"].tolist() == ["cpu smear"]
    assert at.sidebar.caption[0].value == "searches: 1 · experiments: 5 · runs: 12 · entries: 5"
    at.text_input(key="db_url").set_value("mysql://x/y").run()
    assert len(at.error) == 1


def test_reads_are_cached_until_refresh(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    with Store(url) as store:
        store.record_track(Track(name="live", metric="val_bpb"))
        store.record_entry(Entry(track="live", recipe="first", time_to_target_mean=100.0))
    at = render(monkeypatch, url)
    assert frame_with(at, "recipe")["recipe"].tolist() == ["first"]
    with Store(url) as store:  # a worker records while the page is open
        store.record_entry(Entry(track="live", recipe="faster", time_to_target_mean=50.0))
    at.run()
    assert frame_with(at, "recipe")["recipe"].tolist() == ["first"]  # cached: a rerun costs no query
    at.sidebar.button[0].click().run()
    assert frame_with(at, "recipe")["recipe"].tolist() == ["faster", "first"]


def test_db_flag_wins_over_environment(monkeypatch):
    from leaderboard import dashboard_db

    assert dashboard_db.flag_url(["--db", "sqlite:///a.db"]) == "sqlite:///a.db"
    assert dashboard_db.flag_url(["-x", "--db=sqlite:///b.db"]) == "sqlite:///b.db"
    assert dashboard_db.flag_url(["--db"]) is None and dashboard_db.flag_url(["tests/x.py"]) is None
    monkeypatch.setattr("sys.argv", ["app.py", "--db", "sqlite:///flag.db"])
    monkeypatch.setenv("NANORESEARCH_DB", "sqlite:///env.db")
    assert dashboard_db.default_url() == "sqlite:///flag.db"
    monkeypatch.setattr("sys.argv", ["app.py"])
    assert dashboard_db.default_url() == "sqlite:///env.db"


# ------------------------------------------------------------------------------------------------ formatting

def test_config_diff_flattens_and_keeps_one_sided_keys():
    run = {"model": {"depth": 4, "smear": True, "window": [128, 256]}, "seed": 1, "extra": None}
    base = {"model": {"depth": 4, "smear": False, "window": [128, 128]}, "seed": 1, "only_base": 3}
    diff = fmt.config_diff(run, base)
    assert diff.to_dict("records") == [
        {"key": "extra", "baseline": "—", "run": "—"},  # present (null) on one side only: still a difference
        {"key": "model.smear", "baseline": "false", "run": "true"},
        {"key": "model.window", "baseline": "[128, 128]", "run": "[128, 256]"},
        {"key": "only_base", "baseline": "3", "run": "—"},
    ]
    assert fmt.config_diff(run, run).empty


def test_search_baseline_prefers_the_config_then_the_latest_decision():
    decisions = [{"baseline_experiment_id": "old"}, {"baseline_experiment_id": "new"}, {"baseline_experiment_id": None}]
    assert views.search_baseline({"config": {"baseline_experiment_id": "cfg"}}, decisions) == "cfg"
    assert views.search_baseline({"config": None}, decisions) == "new"
    assert views.search_baseline({"config": {}}, []) is None


def test_agent_usage_counts_only_agent_records():
    usage = fmt.agent_usage([
        {"extra": {"agent": {"model": "a", "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.5}}},
        {"extra": {"agent": {"model": "b", "input_tokens": 1, "output_tokens": 1, "cost_usd": 1.5}}},
        {"extra": {"agent": {"model": "a", "input_tokens": 20, "output_tokens": None, "cost_usd": 0.25}}},
        {"extra": {"falsification": "x"}}, {"extra": None},
    ])
    assert (usage["experiments"], usage["input_tokens"], usage["output_tokens"]) == (3, 31, 6)
    assert usage["cost_usd"] == pytest.approx(2.25)
    assert [(m["model"], m["experiments"], m["cost_usd"]) for m in usage["models"]] == [("b", 1, 1.5), ("a", 2, 0.75)]


def test_formatting_helpers():
    assert fmt.mean_std(0.26012, 0.0012) == "0.2601 ± 0.0012" and fmt.mean_std(0.2, None) == "0.2000"
    assert fmt.mean_std(float("nan"), 0.1) == "—"
    assert fmt.duration_unit([30.0, None]) == ("s", 1.0) and fmt.duration_unit([59.0, 3600.0])[0] == "h"
    assert fmt.duration(90.0) == "1.50 min"
    assert fmt.short_version("0123456789abcdef0123-dirty") == "0123456-dirty" and fmt.short_version("v1.2") == "v1.2"
    assert sorted(["d12", "d2", "d4"], key=fmt.rung_key) == ["d2", "d4", "d12"]


def test_bench_command_renders_every_page(tmp_path, capsys, monkeypatch):
    from leaderboard import bench_dashboard

    monkeypatch.delenv("NANORESEARCH_DB", raising=False)  # the bench points it at its database: restored after
    # Tiny sizes: this checks the command works end to end, not how fast (that is the command's own output).
    code = bench_dashboard.main(["--db", f"sqlite:///{tmp_path / 'bench.db'}", "--runs", "8", "--points", "40",
                                 "--repeats", "0"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "(8 runs, 40 metric points, 2 decisions, 1 entries" in printed
    for page in ("leaderboard", "search", "runs", "experiment"):
        assert f"render {page}: first in process" in printed


# ------------------------------------------------------------------------------------------------ benchmark

def test_benchmark_page_shows_the_truth_the_rules_side_by_side_and_the_discovery_curves(monkeypatch, tmp_path):
    from tests.test_benchmark import sample_report
    monkeypatch.setenv("NANORESEARCH_HOME", str(tmp_path / "home"))
    report = sample_report(tmp_path / "home" / "benchmarks" / "demo")
    at = render(monkeypatch, f"sqlite:///{tmp_path / 'none.db'}", page="benchmark", query={"report": "demo"})
    truth = frame_with(at, "planted")
    assert list(truth["change"]) == ["null", "bad", "good", "good2"]
    assert list(truth["measured"]) == ["null", "bad", "good", "good"]
    assert truth.loc[truth["change"] == "good", "true effect (bpb)"].item() == "-0.0900 ± 0.0030"
    assert "null by construction" in truth.loc[truth["change"] == "null", "true effect (bpb)"].item()
    summary = frame_with(at, "false at 1st rung")
    assert len(summary) == 8 and set(summary["rule"]) == {"ladder", "greedy", "halving", "fixed_t"}
    greedy = summary[(summary["proposer"] == "tpe") & (summary["rule"] == "greedy")].iloc[0]
    assert greedy["false at 1st rung"] == 1 and greedy["untried"] == 1 and greedy["true promotions"] == 1
    ladder = summary[(summary["proposer"] == "tpe") & (summary["rule"] == "ladder")].iloc[0]
    expected = next(r for r in report["summary"] if r["proposer"] == "tpe" and r["rule"] == "ladder")
    assert ladder["first true win (h)"] == f"{expected['first_win_h']:.3g} (1/1)" and ladder["missed wins"] == 1
    # The discovery chart of the chosen rule: two searches, a step from (0, 0) to the good change's 0.09.
    (chart,) = [chart_data(c) for c in at.get("vega_lite_chart")]
    assert set(chart["search"]) == {"s"} and set(chart["proposer"]) == {"tpe", "random"}
    tpe = chart[chart["proposer"] == "tpe"].sort_values("proposal")
    assert tpe["true improvement (bpb)"].round(4).tolist() == [0, 0, 0, 0.09, 0.09]
    assert tpe["compute (h)"].is_monotonic_increasing and tpe["compute (h)"].iloc[0] == 0
    outcomes = frame_with(at, "outcome")
    assert set(outcomes["search"]) == {"s"} and "adopted" in set(outcomes["outcome"])


def test_benchmark_page_without_reports_says_how_to_make_one(monkeypatch, tmp_path):
    monkeypatch.setenv("NANORESEARCH_HOME", str(tmp_path / "home"))
    at = render(monkeypatch, f"sqlite:///{tmp_path / 'none.db'}", page="benchmark")
    assert len(at.info) == 1 and "No benchmark reports yet" in at.info[0].value
    assert "python -m harness.benchmark" in at.info[0].value and not at.dataframe
    assert not (tmp_path / "home").exists() and not (tmp_path / "none.db").exists()  # the page created nothing


@pytest.mark.parametrize("text", ["3*1008*200+150", "a_b_c and __init__", "# not a heading", "1. not a list",
                                  "- nor this", "`code` and ~~strike~~", "[link](http://x)", "<b>raw html</b> &amp;",
                                  "$x^2$ and :red[colour] :smile:", "| a | b |", "back\\slash", "two\nlines > quote"])
def test_markdown_literal_renders_as_the_text_itself(text):
    """What the chat page writes through Markdown renders (CommonMark, as Streamlit's renderer) to the text itself."""
    import html

    from markdown_it import MarkdownIt
    rendered = MarkdownIt("commonmark").render(fmt.markdown_literal(text))
    expected = "<br />\n".join(html.escape(line, quote=False) for line in text.split("\n"))
    assert rendered == f"<p>{expected}</p>\n"
