"""Which run is best (`leaderboard.views.best_runs`) and `python -m harness.chat --best`: the fastest record entry's
best seed, runs without a checkpoint here skipped, the best search result when no entry has one, tracks compared by
depth, and one-line errors."""

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harness.chat import main
from leaderboard import Decision, Entry, Experiment, Run, Store, Track
from leaderboard.views import best_runs

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, tzinfo=UTC)
TINY = ["--depth", "1", "--set", "vocab_size=1024", "--set", "sequence_len=64", "--set", "head_dim=32",
        "--set", "device_batch_size=4", "--set", "total_batch_size=256", "--set", "eval_tokens=1024"]


def seed_db(url: str, dirs: dict[str, Path], *, with_entries: bool = True) -> dict[str, int]:
    """A search (baseline + a promoted candidate) and, with entries, two tracks. Run dirs named 'gone' do not exist
    here; the others are real run dirs with checkpoints. Returns run ids by label."""
    ids = {}
    with Store(url) as store:
        search = store.start_search("s", config={"baseline_experiment_id": "base"})
        for exp_id in ("base", "good", "bad", "spd"):
            store.record_experiment(Experiment(id=exp_id, name=exp_id, proposer="manual"), search_id=search)
        store.record_decision(Decision(experiment_id="good", from_rung="d1", to_rung="d2", verdict="promote",
                                       search_id=search))
        store.record_decision(Decision(experiment_id="bad", from_rung="d1", verdict="reject", search_id=search))

        def run(label, exp_id, rung, seed, depth, val_bpb, run_dir, search_id=search, core=None, status="ok"):
            ids[label] = store.record_run(Run(experiment_id=exp_id, rung=rung, seed=seed, status=status, depth=depth,
                                              val_bpb=val_bpb, core=core, run_dir=str(run_dir), search_id=search_id,
                                              finished_at=T0)).run_id
        run("base_d1", "base", "d1", 0, 1, 4.0, dirs["c"])
        run("good_d1", "good", "d1", 0, 1, 3.5, dirs["b"])        # better val_bpb, but a shallower rung than good_d2
        run("good_d2", "good", "d2", 0, 2, 3.9, dirs["gone"])     # the deepest: no checkpoint here
        run("bad_d1", "bad", "d1", 0, 1, 1.0, dirs["a"])          # rejected: never a search result
        if with_entries:
            store.record_track(Track(name="small", metric="val_bpb", target=4.5, depth=1))
            store.record_track(Track(name="big", metric="core", target=0.2, depth=2))
            run("s0", "spd", "track:small", 0, 1, 3.8, dirs["a"], search_id=None)
            run("s1", "spd", "track:small", 1, 1, 3.6, dirs["b"], search_id=None)     # the entry's best seed
            run("s2", "spd", "track:small", 2, 1, 3.0, dirs["c"], search_id=None, status="crash")
            run("fast", "spd", "track:small", 3, 1, 3.7, dirs["gone"], search_id=None)
            run("core0", "spd", "track:big", 0, 2, 3.2, dirs["gone"], search_id=None, core=0.25)
            run("core1", "spd", "track:big", 1, 2, 3.3, dirs["c"], search_id=None, core=0.26)
            common = dict(track="small", recipe="r", experiment_id="spd", is_record=True, created_at=T0)
            store.record_entry(Entry(**common, seeds=3, time_to_target_mean=100.0, run_ids=[ids[k] for k in ("s0", "s1", "s2")]))
            store.record_entry(Entry(**{**common, "created_at": T0 + timedelta(days=1)}, seeds=1, time_to_target_mean=50.0,
                                     run_ids=[ids["fast"]]))                                   # faster, but gone
            store.record_entry(Entry(**{**common, "is_record": False}, seeds=1, time_to_target_mean=10.0,
                                     run_ids=[ids["base_d1"]]))                                # not a record
            store.record_entry(Entry(track="small", recipe="published", is_record=True, time_to_target_mean=5.0,
                                     source="a paper"))                                         # no runs
            store.record_entry(Entry(track="big", recipe="core", experiment_id="spd", is_record=True, seeds=2,
                                     time_to_target_mean=9000.0, run_ids=[ids["core0"], ids["core1"]]))
    return ids


@pytest.fixture(scope="module")
def dirs(tiny_tokenizer, shared_data, tmp_path_factory) -> dict[str, Path]:
    """Three real run dirs with checkpoints (one trained, two copies) and a path that does not exist."""
    root = tmp_path_factory.mktemp("chat_best")
    tiny_tokenizer.save(root / "tokenizer")
    proc = subprocess.run([sys.executable, "-m", "model.train", *TINY, "--data", str(shared_data), "--tokenizer",
                           str(root / "tokenizer"), "--out", str(root / "a"), "--num-iterations", "3"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copytree(root / "a", root / "b")
    shutil.copytree(root / "a", root / "c")
    return {"a": root / "a", "b": root / "b", "c": root / "c", "gone": root / "gone"}


def test_best_runs_ranking(tmp_path):
    paths = {k: tmp_path / k for k in ("a", "b", "c", "gone")}
    url = f"sqlite:///{tmp_path / 'lb.db'}"
    ids = seed_db(url, paths)
    store = Store(url)
    small = [r["id"] for r in best_runs(store, "small")]
    # The fastest record with runs first (the gone one), then the 100 s record's ok seeds best first (the crashed
    # seed is left out), then the non-record entry, then the search results: deepest rung first, then val_bpb;
    # the rejected experiment never appears.
    # A run listed by an entry is not listed again as a search result.
    assert small == [ids[k] for k in ("fast", "s1", "s0", "base_d1", "good_d2", "good_d1")]
    best = best_runs(store, "small")[1]
    assert best["why"].startswith("record #") and "on track small" in best["why"] and "seed 1 (val_bpb 3.6000)" in best["why"]
    assert (best["track"], best["entry_id"]) == ("small", best["entry_id"]) and best["entry_id"] is not None
    # Every track: the deeper model's track first (CORE: the higher seed first), then the small track.
    every = [r["id"] for r in best_runs(store)]
    assert every[:2] == [ids["core1"], ids["core0"]] and every[2:5] == [ids["fast"], ids["s1"], ids["s0"]]
    search_result = best_runs(store)[-1]
    assert search_result["track"] is None and "search result: promoted experiment good of search 's'" in search_result["why"]
    baseline = best_runs(store, "nope")[-1]  # an unknown track has no entries: search results only
    assert [r["id"] for r in best_runs(store, "nope")] == [ids[k] for k in ("good_d2", "good_d1", "base_d1")]
    assert baseline["why"].startswith("search result: baseline base of search 's', seed 0: val_bpb 4.0000 at rung d1")


@pytest.mark.slow
def test_chat_best_loads_the_best_record_it_can_find_here(dirs, tmp_path):
    url = f"sqlite:///{tmp_path / 'lb.db'}"
    seed_db(url, dirs)
    proc = subprocess.run([sys.executable, "-m", "harness.chat", "--best", "--track", "small", "--db", url, "-p",
                           "Once upon a time", "--max-tokens", "4"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"chat: best run {dirs['b']} (experiment spd, rung track:small, seed 1): record #" in proc.stderr
    assert "1 better-ranked runs have no checkpoint here" in proc.stderr  # the faster record's run dir is gone
    assert f"chat: loaded {dirs['b']} (step 3, base" in proc.stderr and proc.stdout.strip()


@pytest.mark.slow
def test_chat_best_over_every_track_and_without_entries(dirs, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'lb.db'}"
    seed_db(url, dirs)
    assert main(["--best", "--db", url, "-p", "hi", "--max-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert f"chat: best run {dirs['c']} (experiment spd, rung track:big, seed 1)" in err  # the deeper track's best seed

    bare = f"sqlite:///{tmp_path / 'search_only.db'}"
    seed_db(bare, dirs, with_entries=False)
    assert main(["--best", "--db", bare, "-p", "hi", "--max-tokens", "2"]) == 0
    err = capsys.readouterr().err
    # No entry: the best search result; the deepest promoted run has no checkpoint here, so the next one.
    assert f"chat: best run {dirs['b']} (experiment good, rung d1, seed 0): search result: promoted experiment" in err
    assert f"loaded {dirs['b']}" in err


@pytest.mark.slow
def test_chat_best_errors_are_one_line(dirs, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'lb.db'}"
    seed_db(url, {k: tmp_path / "nowhere" for k in dirs})  # nothing recorded has a checkpoint on this machine
    cases = [(["--best", "--db", url, "--track", "huge"], "--track 'huge': no such track"),
             (["--best", "--db", url], "none of the 8 ranked runs"),  # 6 of entries, 2 more of the search
             (["--best", "--db", f"sqlite:///{tmp_path / 'missing.db'}"], "does not exist"),
             (["--run", str(dirs["a"]), "--track", "small"], "--track small: only with --best")]
    for argv, expected in cases:
        assert main([*argv, "-p", "hi"]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert captured.out == "" and err.startswith("error: ") and expected in err and "\n" not in err, err


def test_search_results_at_one_depth_follow_the_search_ranking_of_best(tmp_path):
    """At one depth the experiments come in the order of the one definition of best (the mean paired difference
    their search decided on), not by a run's raw val_bpb; the baselines after them."""
    with Store(f"sqlite:///{tmp_path / 'lb.db'}") as store:
        search = store.start_search("s", config={"baseline_experiment_id": "base", "rungs": ["d1", "d2"]})
        for exp_id in ("base", "x", "y"):
            store.record_experiment(Experiment(id=exp_id, name=exp_id, proposer="manual"), search_id=search)
        # An A/A null the search promoted by chance: the baseline's model again, never offered as a result.
        store.record_experiment(Experiment(id="aa", name="null (A/A 1)", proposer="manual", extra={"replica": 1}),
                                search_id=search)
        for exp_id, mean in (("x", -0.001), ("y", -0.01), ("aa", -0.02)):
            store.record_decision(Decision(experiment_id=exp_id, from_rung="d1", to_rung="d2", verdict="promote",
                                           search_id=search, mean_delta=mean, n=3))
        ids = {exp_id: store.record_run(Run(experiment_id=exp_id, rung="d1", seed=0, status="ok", depth=1, val_bpb=v,
                                            run_dir=str(tmp_path / exp_id), search_id=search, finished_at=T0)).run_id
               for exp_id, v in (("x", 3.0), ("y", 3.2), ("base", 2.9), ("aa", 2.8))}  # x, base, aa: low inits
        assert [r["id"] for r in best_runs(store)] == [ids["y"], ids["x"], ids["base"]]
