"""scripts/gpu_check.sh --cpu: every check the GPU script makes runs here at tiny sizes (compile on CPU, Flex with a
window against SDPA, the throughput loop, a short training run, the same run in the patch sandbox), so the script
works before a GPU is at hand. A GPU machine runs it without --cpu (README, Tests)."""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_its_cpu_fallbacks(tmp_path, sandboxed):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NANORESEARCH_HOME": str(tmp_path / "home")}
    env.pop("NANORESEARCH_DATA", None)  # the corpus written from the repository itself, as on an offline GPU box
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)
    checks = dict(re.findall(r"^CHECK (\w+): (PASS|FAIL|SKIP)", done.stdout, re.M))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert checks == {"device": "SKIP", "attention": "PASS", "compile": "PASS", "speed": "SKIP", "fp8": "SKIP",
                      "train": "PASS", "sandbox": "PASS"}, done.stdout[-3000:]
    assert "gpu_check: 0 failed" in done.stdout
