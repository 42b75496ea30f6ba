"""`python -m leaderboard ingest` and `bench`: run dirs as model.train writes them -> leaderboard rows.

Runs on SQLite and PostgreSQL through `db_url` (see tests/test_store.py for how PostgreSQL is chosen).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leaderboard import Store, experiment_id
from leaderboard.__main__ import main
from leaderboard.ingest import read_run_dir
from tests import test_store

db_url = test_store.db_url  # the same SQLite/PostgreSQL fixture as the store tests


def make_run_dir(root: Path, name: str, *, seed: int = 0, depth: int = 2, overrides: dict | None = None,
                 status: str = "ok", n_points: int = 4, extra_config: dict | None = None) -> Path:
    """A run dir shaped like model.train's: config.json, metrics.jsonl, result.json."""
    run = root / name
    run.mkdir(parents=True)
    config = {"depth": depth, "tier": "cpu", "seed": seed, "device": "cpu", "world_size": 1,
              "overrides": overrides or {}, "model": {"n_layer": depth, "n_embd": 64 * depth},
              "optim": {"matrix_lr": 0.02}, "train": {"seq_len": 256, "batch_size": 8},
              "data": "/data/pretrain", "budget": {"time_budget": 60}, "target": "val_bpb<=1.9",
              "code_version": "0123abc", "hardware": "cpu: 2 cores (test)",
              "command": f"python -m model.train --depth {depth} --seed {seed}",
              "created_at": "2026-03-01T12:00:00+00:00", "chat": False} | (extra_config or {})
    (run / "config.json").write_text(json.dumps(config, indent=2))
    points = [{"step": 20 * i, "tokens": 20 * i * 2048, "elapsed_train_s": 3.1 * i, "train_loss": 6.0 - 0.4 * i,
               "val_bpb": 2.4 - 0.1 * i, "tok_per_s": 660.0, "mfu": 0.002} for i in range(n_points)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    result = {"status": status, "val_bpb": points[-1]["val_bpb"] if status == "ok" else None, "core": None,
              "total_training_time": 3.1 * n_points, "time_to_target": None, "tokens": n_points * 40960,
              "flops": 1.2e12, "peak_memory_bytes": 300_000_000, "steps": 20 * n_points}
    if status != "ok":
        result["reason"] = "loss became nan at step 40"
    (run / "result.json").write_text(json.dumps(result))
    return run


def test_run_dir_becomes_experiment_run_and_points(db_url, tmp_path, capsys):
    run_dir = make_run_dir(tmp_path, "d2-smear", overrides={"smear": True, "backout": False}, seed=1)
    assert main(["ingest", str(run_dir), "--db", db_url]) == 0
    assert capsys.readouterr().out.startswith(f"inserted {run_dir}: run ")
    with Store(db_url) as store:
        [run] = store.runs(details=True)
        exp = store.experiment(run["experiment_id"])
        points = store.metric_points([run["id"]])
    assert (exp["name"], exp["proposer"], exp["tweaks"], exp["code_version"]) == \
        ("d2-smear", "manual", {"smear": True, "backout": False}, "0123abc")
    assert (run["rung"], run["depth"], run["seed"], run["status"]) == ("d2", 2, 1, "ok")
    assert run["val_bpb"] == pytest.approx(2.1) and run["tokens"] == 4 * 40960 and run["steps"] == 80
    assert run["run_dir"] == str(run_dir.resolve()) and run["config"]["command"].startswith("python -m model.train")
    assert run["started_at"].isoformat() == "2026-03-01T12:00:00+00:00" and run["finished_at"] is not None
    assert [p["step"] for p in points] == [0, 20, 40, 60] and points[-1]["val_bpb"] == pytest.approx(2.1)


def test_experiment_id_is_the_recipe_not_the_run(tmp_path):
    def exp_id(name: str, **kw) -> str:
        return read_run_dir(make_run_dir(tmp_path, name, **kw)).experiment.id

    base = exp_id("a", overrides={"smear": True, "window": 64})
    assert len(base) == 12 and int(base, 16) >= 0
    # Seed, device, output dir, time stamps and key order do not change the recipe ...
    assert exp_id("b", seed=7, overrides={"window": 64, "smear": True},
                  extra_config={"device": "cuda", "created_at": "2027-01-01T00:00:00+00:00"}) == base
    # ... anything that changes what is trained does.
    assert exp_id("c", overrides={"smear": False, "window": 64}) != base
    assert exp_id("d", depth=4, overrides={"smear": True, "window": 64}) != base
    assert exp_id("e", overrides={"smear": True, "window": 64}, extra_config={"code_version": "fff"}) != base
    assert exp_id("f", overrides={"smear": True, "window": 64}, extra_config={"budget": {"num_iterations": 9}}) != base


def test_experiment_id_helper_is_canonical():
    assert experiment_id({"b": 1, "a": [1, 2]}) == experiment_id({"a": [1, 2], "b": 1})
    assert experiment_id({"a": 1}) != experiment_id({"a": 1.5})
    with pytest.raises(ValueError):
        experiment_id({"a": float("nan")})


def test_harness_run_dir_keeps_its_experiment_and_rung(tmp_path):
    parsed = read_run_dir(make_run_dir(tmp_path, "x", extra_config={"experiment_id": "abcdef012345", "rung": "r0"}))
    assert (parsed.experiment.id, parsed.run.rung) == ("abcdef012345", "r0")


def test_ingesting_twice_changes_nothing(db_url, tmp_path, capsys):
    dirs = [str(make_run_dir(tmp_path, f"run{s}", seed=s)) for s in range(3)]
    dirs.append(str(make_run_dir(tmp_path, "diverged", seed=9, status="diverged")))
    assert main(["ingest", *dirs, "--db", db_url]) == 0
    with Store(db_url) as store:
        before = store.counts()
        runs_before = store.runs(details=True)
    capsys.readouterr()
    assert main(["ingest", *dirs, "--db", db_url]) == 0
    assert capsys.readouterr().out.count("unchanged") == 4
    with Store(db_url) as store:
        assert store.counts() == before and store.runs(details=True) == runs_before
    assert (before["experiments"], before["runs"], before["metric_points"]) == (1, 4, 16)
    assert [r["reason"] for r in runs_before if r["status"] == "diverged"] == ["loss became nan at step 40"]


def test_bad_run_dirs_are_reported_one_line_each_and_the_good_ones_ingested(db_url, tmp_path, capsys):
    good1 = make_run_dir(tmp_path, "good1")
    unfinished = make_run_dir(tmp_path, "unfinished", seed=1)
    (unfinished / "result.json").unlink()
    bad_config = make_run_dir(tmp_path, "bad-config", seed=2)
    (bad_config / "config.json").write_text('{"depth": 2, "seed": ')
    bad_metrics = make_run_dir(tmp_path, "bad-metrics", seed=3)
    with open(bad_metrics / "metrics.jsonl", "a") as f:
        f.write('{"step": 100, "val_bpb": \n')
    bad_status = make_run_dir(tmp_path, "bad-status", seed=4)
    (bad_status / "result.json").write_text(json.dumps({"status": "finished"}))
    good2 = make_run_dir(tmp_path, "good2", seed=5)
    missing = tmp_path / "does-not-exist"

    args = [str(p) for p in (good1, unfinished, bad_config, bad_metrics, bad_status, missing, good2)]
    assert main(["ingest", *args, "--db", db_url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("error: ") for line in err)
    for line, named in zip(err, [unfinished, bad_config / "config.json", bad_metrics / "metrics.jsonl",
                                 bad_status / "result.json", missing], strict=True):
        assert str(named) in line, line
    assert "result.json" in err[0] and "metrics.jsonl:5" in err[2] and "'finished'" in err[3]
    with Store(db_url) as store:
        assert sorted(r["seed"] for r in store.runs()) == [0, 5]


def test_cli_entry_point_errors_are_one_line_with_exit_code_2(tmp_path):
    good = make_run_dir(tmp_path, "good")
    env = {k: v for k, v in os.environ.items() if k != "NANORESEARCH_DB"}
    cases = [(["ingest", str(good), "--db", "nonsense"], "database URL 'nonsense'"),
             (["ingest", str(tmp_path / "nope")], "not a directory")]
    for args, expected in cases:
        proc = subprocess.run([sys.executable, "-m", "leaderboard", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and expected in proc.stderr
        assert "Traceback" not in proc.stderr
    # The default database is nanoresearch.db in the working directory (created by the second case).
    assert (tmp_path / "nanoresearch.db").exists()


def test_bench_command_reports_rates_and_query_times(db_url, capsys):
    assert main(["bench", "--db", db_url, "--runs", "12", "--points", "50"]) == 0
    out = capsys.readouterr().out
    assert "insert: 12 runs + 50 metric points" in out and "runs/s" in out and "points/s" in out
    assert "query leaderboard" in out and "query search_summary" in out and "EXCEEDED" not in out
    with Store(db_url) as store:
        counts = store.counts()
    assert (counts["runs"], counts["metric_points"], counts["entries"]) == (12, 50, 1)
    # It refuses a database that already has runs: it would mix synthetic runs into real ones.
    assert main(["bench", "--db", db_url, "--runs", "12", "--points", "50"]) == 2
    assert "expected a database without runs" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_made_by_hand_is_ingested_and_shows_on_the_dashboard(tmp_path, shared_data, tiny_tokenizer, monkeypatch):
    """The issue's path: `python -m model.train` outside the harness, `python -m leaderboard ingest`, then the
    Leaderboard page (Best runs) and the Runs page show it."""
    from streamlit.testing.v1 import AppTest

    repo = Path(__file__).resolve().parents[1]
    tokenizer_dir = tmp_path / "tokenizer"
    tiny_tokenizer.save(tokenizer_dir)
    run_dir = tmp_path / "my-tiny-run"
    subprocess.run([sys.executable, "-m", "model.train", "--depth", "1", "--set", "vocab_size=1024", "--set",
                    "sequence_len=64", "--set", "head_dim=32", "--set", "device_batch_size=4", "--set",
                    "total_batch_size=256", "--set", "eval_tokens=2048", "--data", str(shared_data), "--tokenizer",
                    str(tokenizer_dir), "--out", str(run_dir), "--num-iterations", "8", "--eval-every", "4"],
                   cwd=repo, check=True, capture_output=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"sqlite:///{tmp_path / 'board.db'}"
    assert main(["ingest", str(run_dir), "--db", url]) == 0
    val_bpb = json.loads((run_dir / "result.json").read_text())["val_bpb"]

    monkeypatch.setenv("NANORESEARCH_DB", url)
    app = repo / "leaderboard" / "app.py"
    board = AppTest.from_file(app, default_timeout=60).run()
    assert not board.exception
    best = next(d.value for d in board.dataframe if "training time" in d.value.columns)
    assert list(best["experiment"]) == ["my-tiny-run"] and list(best["depth"]) == ["d1"]
    assert list(best["val_bpb"]) == [f"{val_bpb:.4f}"] and list(best["seeds"]) == [1]

    runs = AppTest.from_file(app, default_timeout=60).run()
    runs.switch_page("dashboard_runs.py").run()
    assert not runs.exception
    table = next(d.value for d in runs.dataframe if "experiment" in d.value.columns and "status" in d.value.columns)
    assert list(table["experiment"]) == ["my-tiny-run"] and list(table["status"]) == ["ok"]
    assert list(table["val_bpb"]) == [val_bpb]
