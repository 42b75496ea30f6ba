"""`python -m harness.calibrate` end to end on a tiny tier: the baseline and both nulls at every rung, a table of
null spreads, MDEs per seed count and run costs; runs far below the rung's calibrated throughput are flagged as
loaded, in the output and in the database."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from leaderboard import Store
from tests.conftest import tiny_tier

REPO = Path(__file__).resolve().parents[1]

# Every test here starts training subprocesses (harness.calibrate): deselect with -m "not slow" for a quick loop.
pytestmark = pytest.mark.slow

RUNGS = """
[statistics]
alpha = 0.05
min_effect = 0.0
max_seeds = 3
[[rungs]]
name = "d1"
depth = 1
flops_budget = 2e9
seeds = 2
tok_per_s = 1e9
[[rungs]]
name = "d2"
depth = 2
num_iterations = 12
seeds = 2
tok_per_s = 1.0
"""


def test_calibration_prints_spreads_mdes_and_costs_and_flags_loaded_runs(tmp_path, shared_data, tiny_tokenizer):
    tier = tmp_path / "tiny.toml"
    tier.write_text(tiny_tier("test tier: two rungs, calibrated throughputs that cannot both hold", RUNGS))
    db = f"sqlite:///{tmp_path / 'lb.db'}"
    proc = subprocess.run([sys.executable, "-m", "harness.calibrate", "--tier", str(tier), "--db", db,
                           "--runs-dir", str(tmp_path / "runs"), "--data", str(shared_data)],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "calibration 'tiny-calibration' of tier tiny finished" in out
    for rung in ("d1", "d2"):  # every rung is measured, not only the first
        assert re.search(rf"  {rung} \(depth \d, .*\): baseline val_bpb \d\.\d{{4}} \+- \d\.\d{{4}}", out), out
        for kind in ("structural", "parametric"):
            row = re.search(rf"(?m)^    {kind} +(\d\.\d{{5}}) +3  +(\d+\.\d{{4}}) +(\d+\.\d{{4}})", out)
            assert row, out
            assert float(row.group(2)) > float(row.group(3))  # three seeds detect less than two
    assert "a search starts with 2 seeds, per-look alpha 0.0" in out and "CPU-min" in out and "tok/s" in out
    # 3 seeds (the tier's max_seeds) of the baseline and both nulls at each rung.
    runs = Store(db).runs()
    assert len(runs) == 2 * 3 * 3 and all(r["status"] == "ok" for r in runs)
    assert all(r["loaded"] is True for r in runs if r["rung"] == "d1")  # nothing trains at 1e9 tok/s
    assert all(r["loaded"] is False for r in runs if r["rung"] == "d2") and all(r["tok_per_s"] > 0 for r in runs)
    assert "LOADED:" in out and "the result stands: the rung is budgeted in compute" in out
    spreads = Store(db).null_spreads("tiny-calibration")
    assert {(s["rung"], s["kind"]) for s in spreads} == {(r, k) for r in ("d1", "d2") for k in ("structural", "parametric")}
