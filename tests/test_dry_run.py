"""`--dry-run` (model.train, harness.search, harness.speedrun): what would run and with which settings, printed
without running, downloading or recording anything."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import search, speedrun

REPO = Path(__file__).resolve().parents[1]


def test_model_train_dry_run_prints_the_plan_and_touches_nothing(tmp_path):
    out = tmp_path / "never"
    done = subprocess.run([sys.executable, "-m", "model.train", "--depth", "24", "--tier", "gpu", "--out", str(out),
                           "--param-data-ratio", "8", "--dry-run", "--world", "8", "--data", str(tmp_path / "nodata")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    plan = json.loads(done.stdout)
    # nanochat's Run 6 at d24: 2^20 tokens a step over 8 ranks x 32 sequences x 2048 = 2 accumulation steps, every LR
    # x sqrt(2), weight decay 0.28 x sqrt(2) x p_d12 / p_d24, and 8 x 729.8M scaling params / 2^20 = 5,568 steps.
    assert (plan["total_batch_size"], plan["grad_accum"], plan["world"]) == (1_048_576, 2, 8)
    assert plan["lr_batch_scale"] == pytest.approx(2 ** 0.5)
    assert plan["learning_rates"]["matrix"] == pytest.approx(0.02 * 2 ** 0.5)
    assert plan["weight_decay"] == pytest.approx(0.059738, abs=1e-6)
    assert plan["num_iterations"] == 5568 and plan["horizon"] == {"param_data_ratio": 8.0}
    assert not out.exists()


def test_search_dry_run_prints_every_rungs_command_and_settings_and_records_nothing(tmp_path, capsys):
    db = tmp_path / "lb.db"
    assert search.main(["--tier", "gpu", "--dry-run", "--db", f"sqlite:///{db}", "--runs-dir", str(tmp_path / "runs"),
                        "--executor", "slurm", "--slurm-partition", "h100"]) == 0
    out = capsys.readouterr().out
    assert "rung d12: depth 12" in out and "rung d24: depth 24" in out
    # The screening rung: ~5 minutes of one H100 by arithmetic, in FLOPs, and said to be uncalibrated.
    assert "rung d12s: depth 12, 1.2e+17 FLOPs, 3 seeds, 1 device; uncalibrated" in out
    assert out.count("; uncalibrated") == 3 and "horizon: 301 steps, 157,810,688 tokens" in out
    assert "torchrun --standalone --nproc_per_node=8 -m model.train --depth 24 --tier gpu" in out
    assert "batch: 524,288 tokens" in out and "batch: 1,048,576 tokens = 32 sequences x 8 ranks x 2 accumulation" in out
    assert "weight decay: 0.05974" in out and "horizon: 5,568 steps" in out
    assert "#SBATCH --gpus-per-node=8" in out and "#SBATCH --partition=h100" in out
    assert not db.exists() and not (tmp_path / "runs").exists()


def test_speedrun_dry_run_prints_the_tracks_job_and_records_nothing(tmp_path, capsys):
    db = tmp_path / "lb.db"
    assert speedrun.main(["--track", "gpt2-8xh100", "--dry-run", "--db", f"sqlite:///{db}",
                          "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "--param-data-ratio 8" in out and "--target 'core>=0.256525'" in out and "horizon: 5,568 steps" in out
    assert "--set fp8=true" in out and "fp8 on (SM89+ GPUs)" in out  # nanochat's record trains in fp8
    assert not db.exists() and not (tmp_path / "runs").exists()
    assert speedrun.main(["--track", "gpt2-8xh100", "--dry-run", "--experiment", "abc123", "--db",
                          f"sqlite:///{db}"]) == 2
    assert "--dry-run: only with --recipe" in capsys.readouterr().err
