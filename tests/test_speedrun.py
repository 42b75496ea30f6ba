"""`python -m harness.speedrun`: a 2-seed speedrun on a tiny track records an entry whose statistics are those of its
runs' result.json files (recomputed here with scipy), references are recorded once, a rerun never repeats a finished
seed, a failed seed is recorded and counts against the entry, the record rule, the track's job shape, bad input."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from experiments.catalog import load_recipe, load_tier, load_track
from harness.executors import Executor
from harness.experiment import Experiment
from harness.jobs import Job
from harness.speedrun import CORE_AT_END_ONLY, main, summarize, track_overrides, track_rung
from harness.speedrun_export import LEADERBOARD_HEADER
from leaderboard import Store
from tests.conftest import tiny_tier

REPO = Path(__file__).resolve().parents[1]
TARGET = 3.45      # measured (spread val set): 30 steps at depth 1 end near val_bpb 3.31-3.32 and pass 3.45 by step 20, not by 10
REFERENCE_S = 1e6  # a published reference entry far slower than any tiny run

TIER = tiny_tier("test tier: a few dozen steps at depth 1", """
[[rungs]]
name = "d1"
depth = 1
num_iterations = 30
seeds = 2
""")

TRACK = """
name = "tiny"
description = "test track"
tier = "{tier}"
depth = 1
metric = "val_bpb"
target = {target}
hardware = "cpu (test)"
num_iterations = 30
data_seed = 0
[overrides]
eval_every = 10
[[references]]
name = "published tiny"
date = "2026-01-01"
seeds = 1
val_bpb = 4.25
total_training_time = {reference}
source = "a test reference"
"""


def speedrun(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    data = (root / "data").read_text()
    cmd = [sys.executable, "-m", "harness.speedrun", "--db", f"sqlite:///{root / 'lb.db'}", "--runs-dir",
           str(root / "runs"), "--data", data, *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")},
                               "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"})  # --wandb never reaches the network


@pytest.fixture(scope="module")
def first(tmp_path_factory, shared_data, tiny_tokenizer):
    """The track files and a finished 2-seed speedrun of the baseline recipe."""
    root = tmp_path_factory.mktemp("speedrun")
    (root / "data").write_text(str(shared_data))  # where speedrun() finds the pretraining shards
    (root / "tier.toml").write_text(TIER)
    (root / "track.toml").write_text(TRACK.format(tier=root / "tier.toml", target=TARGET, reference=REFERENCE_S))
    proc = speedrun(root, "--track", str(root / "track.toml"), "--recipe", "baseline", "--seeds", "2", "--parallel", "2",
                    "--wandb")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc


def count_launches(run_dir: Path) -> int:
    log = Path(run_dir) / "train.log"
    return log.read_text().count("\n$ ") if log.exists() else 0


def entries(root) -> list[dict]:
    return Store(f"sqlite:///{root / 'lb.db'}").leaderboard("tiny")


@pytest.mark.slow
def test_wandb_logs_each_seed_offline_grouped_by_track_and_tagged(first):
    from tests.wandb_offline import offline_runs
    root, _ = first
    runs = {r["seed"]: r for r in Store(f"sqlite:///{root / 'lb.db'}").runs(rung="track:tiny")}
    logged = offline_runs(root / "runs")
    assert sorted(w["config"]["seed"] for w in logged) == sorted(runs) == [0, 1]
    for w in logged:
        run = runs[w["config"]["seed"]]
        assert w["group"] == "speedrun tiny" and w["job_type"] == run["experiment_id"]
        assert set(w["tags"]) == {"rung:track:tiny", f"seed:{run['seed']}", "baseline"}
        assert w["summary"]["final_val_bpb"] == pytest.approx(run["val_bpb"], abs=1e-6)
        assert w["summary"]["time_to_target"] > 0 and any("val_bpb" in h for h in w["history"])


@pytest.mark.slow
def test_entry_statistics_are_those_of_the_runs(first):
    root, proc = first
    store = Store(f"sqlite:///{root / 'lb.db'}")
    mine = [e for e in entries(root) if e["experiment_id"] is not None]
    assert len(mine) == 1
    entry = mine[0]
    runs = sorted(store.runs(rung="track:tiny"), key=lambda r: r["seed"])
    assert [r["seed"] for r in runs] == [0, 1] and all(r["status"] == "ok" for r in runs)
    assert sorted(entry["run_ids"]) == sorted(r["id"] for r in runs)
    results = [json.loads((Path(r["run_dir"]) / "result.json").read_text()) for r in runs]
    val = np.array([x["val_bpb"] for x in results])
    times = np.array([x["time_to_target"] for x in results])
    assert (times > 0).all() and (times < np.array([x["total_training_time"] for x in results])).all()  # met mid-run
    assert entry["metric_mean"] == pytest.approx(val.mean()) and entry["metric_std"] == pytest.approx(val.std(ddof=1))
    assert entry["time_to_target_mean"] == pytest.approx(times.mean())
    assert entry["time_to_target_std"] == pytest.approx(times.std(ddof=1))
    p = stats.ttest_1samp(val, TARGET, alternative="less").pvalue
    assert entry["p_value"] == pytest.approx(p)
    assert entry["is_record"] == bool(p < 0.01 and times.mean() < REFERENCE_S)  # the reference is the record to beat
    assert entry["seeds"] == 2 and entry["recipe"] == "baseline"  # every seed reached it: no note
    assert "--track" in entry["command"] and "--recipe baseline --seeds 2" in entry["command"]
    configs = [json.loads((Path(r["run_dir"]) / "config.json").read_text()) for r in runs]
    assert sorted((c["seed"], c["data_seed"]) for c in configs) == [(0, 0), (1, 0)]  # one data order, two inits
    config = configs[0]
    assert entry["code_version"] == config["code_version"]
    assert config["depth"] == 1 and str(config["overrides"]["eval_every"]) == "10" and config["target"] == f"val_bpb<={TARGET}"
    experiment = store.experiment(entry["experiment_id"])
    assert experiment["proposer"] == "baseline" and experiment["extra"]["recipe"] == "baseline"
    assert experiment["extra"]["tier"] == "tiny"
    assert f"p = {p:.3g}" in proc.stdout and ("verdict: a new record" if entry["is_record"] else "verdict: not") in proc.stdout
    references = [e for e in entries(root) if e["source"] == "a test reference"]
    assert len(references) == 1 and references[0]["is_record"] and references[0]["time_to_target_mean"] == REFERENCE_S


@pytest.mark.slow
def test_rerun_repeats_no_finished_seed_and_more_seeds_add_only_the_new_ones(first):
    root, _ = first
    track = str(root / "track.toml")
    runs_before = {r["seed"]: r for r in Store(f"sqlite:///{root / 'lb.db'}").runs(rung="track:tiny")}
    n_entries = len(entries(root))
    again = speedrun(root, "--track", track, "--recipe", "baseline", "--seeds", "2")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2 already finished" in again.stdout and "already records these runs" in again.stdout
    assert len(entries(root)) == n_entries  # no second entry for the same runs
    assert all(count_launches(r["run_dir"]) == 1 for r in runs_before.values())

    more = speedrun(root, "--track", track, "--recipe", "baseline", "--seeds", "3")
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    runs = {r["seed"]: r for r in Store(f"sqlite:///{root / 'lb.db'}").runs(rung="track:tiny")}
    assert sorted(runs) == [0, 1, 2] and all(count_launches(runs_before[s]["run_dir"]) == 1 for s in (0, 1))
    assert count_launches(runs[2]["run_dir"]) == 1
    latest = entries(root)
    assert len(latest) == n_entries + 1
    three = next(e for e in latest if e["seeds"] == 3)
    assert sorted(three["run_ids"]) == sorted(r["id"] for r in runs.values())
    assert len([e for e in latest if e["source"] == "a test reference"]) == 1  # the reference is never duplicated


@pytest.mark.slow
def test_a_failed_seed_is_recorded_and_the_entry_is_no_record(first):
    root, _ = first
    store = Store(f"sqlite:///{root / 'lb.db'}")
    # One attention head at depth 1 (dim 64, head_dim 64) cannot have two kv heads: the run fails at start-up.
    broken = Experiment(tweaks={"n_kv_head": 2}, tier="tiny", code_version="an older commit", name="two kv heads")
    store.record_experiment(broken.record())
    proc = speedrun(root, "--track", str(root / "track.toml"), "--experiment", broken.id[:10], "--seeds", "1")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "proposed on code an older commit" in proc.stdout
    run = store.runs(experiment_id=broken.id, details=True)
    assert len(run) == 1 and run[0]["status"] == "crash" and run[0]["reason"] and run[0]["rung"] == "track:tiny"
    assert "n_kv_head" in (run[0]["log_tail"] or "")
    entry = next(e for e in entries(root) if e["experiment_id"] == broken.id)
    assert not entry["is_record"] and entry["metric_mean"] is None and entry["time_to_target_mean"] is None
    assert entry["recipe"] == "two kv heads [0/1 seeds reached the target, 1 failed]"
    assert "not a record: 1 of 1 seeds failed (seed 0 crash" in proc.stdout


# --- the record rule ---------------------------------------------------------------------------------------------

def rows(values, times, statuses=None):
    statuses = statuses or ["ok"] * len(values)
    return [{"seed": i, "status": s, "reason": None if s == "ok" else "boom", "val_bpb": v, "core": v,
             "time_to_target": t} for i, (v, t, s) in enumerate(zip(values, times, statuses))]


def test_a_significant_entry_is_the_first_record_or_must_beat_the_record():
    values = [2.20, 2.21, 2.19]
    s = summarize(rows(values, [10.0, 12.0, 11.0]), 3, "val_bpb", 2.3, record=None)
    assert s.p_value == pytest.approx(stats.ttest_1samp(values, 2.3, alternative="less").pvalue)
    assert s.p_value < 0.01 and s.is_record and "first record" in s.why
    assert (s.time_to_target_mean, s.time_to_target_std) == (pytest.approx(11.0), pytest.approx(1.0))
    slower = summarize(rows(values, [10.0, 12.0, 11.0]), 3, "val_bpb", 2.3,
                       record={"id": 7, "recipe": "ref", "time_to_target_mean": 11.0})
    assert not slower.is_record and "does not beat the record's 11.0 s (entry #7, ref)" in slower.why
    faster = summarize(rows(values, [10.0, 12.0, 11.0]), 3, "val_bpb", 2.3,
                       record={"id": 7, "recipe": "ref", "time_to_target_mean": 11.5})
    assert faster.is_record and "beats the record's 11.5 s" in faster.why


def test_core_is_tested_upwards_and_noise_is_not_a_record():
    values = [0.270, 0.268, 0.269]
    s = summarize(rows(values, [5.0] * 3), 3, "core", 0.2565, record=None)
    assert s.p_value == pytest.approx(stats.ttest_1samp(values, 0.2565, alternative="greater").pvalue) and s.is_record
    noisy = [0.25, 0.27, 0.258]
    n = summarize(rows(noisy, [5.0] * 3), 3, "core", 0.2565, record=None)
    assert n.p_value == pytest.approx(stats.ttest_1samp(noisy, 0.2565, alternative="greater").pvalue)
    assert n.p_value > 0.01 and not n.is_record and "not significantly > the target" in n.why


def test_seeds_that_fail_or_miss_the_target_count_against_the_entry():
    missed = summarize(rows([2.20, 2.21, 2.25], [10.0, 12.0, None]), 3, "val_bpb", 2.3, record=None)
    assert not missed.is_record and "1 of 3 seeds never reached the target" in missed.why
    assert missed.time_to_target_mean == pytest.approx(11.0) and missed.reached == 2 and missed.metric_n == 3
    assert missed.note() == " [2/3 seeds reached the target]"
    failed = summarize(rows([2.20, 2.21, None], [10.0, 12.0, None], ["ok", "ok", "diverged"]), 3, "val_bpb", 2.3, None)
    assert not failed.is_record and failed.why.startswith("not a record: 1 of 3 seeds failed (seed 2 diverged: boom)")
    assert failed.metric_n == 2 and failed.metric_mean == pytest.approx(2.205)
    single = summarize(rows([2.0], [3.0]), 1, "val_bpb", 2.3, record=None)
    assert single.p_value is None and not single.is_record and "at least 2 seeds" in single.why


def test_seeds_on_a_loaded_machine_make_the_entry_not_comparable():
    """A speedrun on a busy machine says so, instead of quietly missing its target or posting a slow time."""
    runs = rows([2.20, 2.21, 2.45], [10.0, 12.0, None])
    for r, tok_per_s, loaded in zip(runs, (2900.0, 2950.0, 430.0), (False, False, True)):
        r.update(tok_per_s=tok_per_s, loaded=loaded)
    s = summarize(runs, 3, "val_bpb", 2.3, record=None, calibrated_tok_per_s=2941.0)
    assert not s.is_record and s.why.startswith("not comparable: 1 of 3 seeds trained on a loaded machine")
    assert "seed 2 430 tok/s, target missed against a calibrated 2,941" in s.why
    assert s.note() == " [2/3 seeds reached the target, 1 on a loaded machine]"
    quiet = summarize([{**r, "loaded": False} for r in runs[:2]], 2, "val_bpb", 2.3, record=None)
    assert "loaded" not in quiet.why and not quiet.loaded


# --- the track's jobs --------------------------------------------------------------------------------------------

def test_the_gpt2_track_runs_torchrun_on_one_8_gpu_node_with_core_during_training(tmp_path):
    track = load_track("gpt2-8xh100")
    tier = load_tier(track.tier)
    exp = Experiment(tweaks={"smear": False}, tier=tier.name)
    overrides = track_overrides(track, tier, load_recipe("baseline"), exp)
    assert overrides["core_max_per_task"] == 0 and overrides["smear"] is False
    rung = track_rung(track, seeds=3)
    job = Job(experiment_id=exp.id, rung=rung, slot=1, seed=1, run_dir=tmp_path / "seed1", train_tier=tier.train_tier,
              overrides=overrides)
    command = job.command()
    assert f"--nproc_per_node={track.devices}" in command and command[0].endswith("torchrun")
    flags = dict(zip(command, command[1:]))
    assert flags["--depth"] == "24" and flags["--param-data-ratio"] == "8" and flags["--rung"] == "track:gpt2-8xh100"
    assert flags["--target"] == "core>=0.256525" and flags["--core-every"] == "3000" and flags["--seed"] == "1"
    script = Executor("slurm", tmp_path / "submitit").sbatch_script(job)
    assert "#SBATCH --gpus-per-node=8" in script and "#SBATCH --nodes=1" in script


def test_a_core_track_without_a_period_evaluates_core_at_the_end_only():
    cpu = load_track("cpu")
    assert track_rung(cpu, 2).core_every is None  # val_bpb track without a CORE subset: no CORE at all
    from dataclasses import replace
    assert track_rung(replace(cpu, core_max_per_task=100), 2).core_every == CORE_AT_END_ONLY


# --- the tracks and their references; bad input --------------------------------------------------------------------

def test_list_records_the_published_references_once_and_names_run_6_the_record(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'lb.db'}"
    assert main(["--list", "--db", url]) == 0
    assert main(["--list", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "6 published references recorded now" in out and out.count("recorded now") == 1
    assert "record 5940.0 s (1.65 h) by nanochat Run 6 (autoresearch round 2)" in out
    board = Store(url).leaderboard("gpt2-8xh100")
    references = load_track("gpt2-8xh100").references
    assert len(board) == len(references) == 6 and all(e["is_record"] and e["source"] for e in board)
    by_name = {e["recipe"].split(" (")[0]: e for e in board}
    # nanochat master (92d63d4) dev/LEADERBOARD.md and README: Runs 4-6 publish hours only (kept as hours x 3600).
    assert [(by_name[f"nanochat Run {i}"]["time_to_target_mean"], by_name[f"nanochat Run {i}"]["metric_mean"],
             by_name[f"nanochat Run {i}"]["seeds"], by_name[f"nanochat Run {i}"]["val_bpb"]) for i in (4, 5, 6)] == [
        (2.02 * 3600, 0.25714, 7, 0.71854), (1.80 * 3600, 0.2690, 5, 0.71808), (1.65 * 3600, 0.262634, 5, 0.71800)]
    assert by_name["nanochat Run 6"]["code_version"] == "nanochat a825e63" and "ratio=8 " in by_name["nanochat Run 6"]["command"]
    assert board[0]["rank"] == 1 and board[0]["recipe"].startswith("nanochat Run 6")  # the fastest published run leads


def test_a_reference_the_track_no_longer_lists_is_withdrawn_and_speedrun_entries_stay(tmp_path, capsys):
    from leaderboard import Entry, Experiment
    url = f"sqlite:///{tmp_path / 'lb.db'}"
    assert main(["--list", "--db", url]) == 0
    store = Store(url)
    # What an older track file recorded (a Run 4 that nanochat's leaderboard does not have), and a user's entry.
    store.record_reference(Entry(track="gpt2-8xh100", recipe="nanochat Run 4 (d26, fp8, ratio 7.25)", seeds=2,
                                 time_to_target_mean=8976, is_record=True, source="an old track file"))
    store.record_experiment(Experiment(id="mine", name="mine", proposer="manual"))
    store.record_entry(Entry(track="gpt2-8xh100", recipe="mine", experiment_id="mine", seeds=3,
                             time_to_target_mean=7000.0, source="harness.speedrun"))
    assert main(["--list", "--db", url]) == 0
    recipes = [e["recipe"] for e in Store(url).leaderboard("gpt2-8xh100")]
    assert "nanochat Run 4 (d26, fp8, ratio 7.25)" not in recipes and "mine" in recipes and len(recipes) == 7


@pytest.mark.parametrize("argv,needle", [
    (["--track", "moon"], "unknown track 'moon'"),
    (["--track", "cpu", "--seeds", "0"], "--seeds 0"),
    (["--track", "cpu", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["--track", "cpu", "--experiment", "deadbeef0000"], "--experiment 'deadbeef0000'"),
    (["--seeds", "2"], "--track is required"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, needle):
    assert main([*argv, "--db", f"sqlite:///{tmp_path / 'lb.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err


def test_recipe_and_experiment_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--track", "cpu", "--recipe", "baseline", "--experiment", "abc"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def table_cells(line: str) -> list[str]:
    """The cells of one Markdown table row (GitHub's rules: outer pipes, \\| inside a cell)."""
    assert line.startswith("|") and line.endswith("|"), line
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line[1:-1])]


@pytest.mark.slow
def test_export_writes_the_submission_bundle_without_training_again(first, tmp_path):
    root, _ = first
    out = tmp_path / "bundle"
    n_entries = len(entries(root))
    proc = speedrun(root, "--track", str(root / "track.toml"), "--recipe", "baseline", "--seeds", "2", "--export", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "] start " not in proc.stdout and f"submission bundle: {out}" in proc.stdout  # both seeds were finished
    readme = (out / "README.md").read_text().splitlines()
    header = readme.index(LEADERBOARD_HEADER)
    names, rule, row = (table_cells(line) for line in readme[header:header + 3])
    assert names == ["#", "time", "val_bpb", "CORE", "Description", "Date", "Commit", "Contributors"]
    assert len(rule) == len(row) == 8 and all(set(c) == {"-"} for c in rule)
    # (other tests of this module add a 3-seed entry of the same recipe and an entry of a broken experiment)
    [entry] = [e for e in entries(root) if e["experiment_id"] is not None and e["seeds"] == 2]
    assert row[0] == "?" and float(row[1]) == pytest.approx(entry["time_to_target_mean"] / 3600, abs=0.006)
    assert float(row[2]) == pytest.approx(entry["val_bpb"], abs=1e-5) and row[4] == "baseline"
    assert row[6] == entry["code_version"].split(",")[0][:7]
    text = "\n".join(readme)
    assert f"p = {entry['p_value']:.3g}" in text and "| seed | status |" in text and entry["command"] in text
    for seed in (0, 1):
        for name in ("config.json", "result.json", "metrics.jsonl", "train.log"):
            assert (out / "seeds" / f"seed{seed}" / name).is_file(), (seed, name)
    env = json.loads((out / "environment.json").read_text())
    assert env["torch"] and set(env["runs"]) == {"0", "1"} and all(env["runs"].values())
    assert json.loads((out / "changes.json").read_text())["tweaks"] == {}
    # The bundle goes beside the database's entry, never instead of it: still one entry.
    assert len(entries(root)) == n_entries
