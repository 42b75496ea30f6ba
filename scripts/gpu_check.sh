#!/usr/bin/env bash
# What must be true on a GPU, in one command (under ten minutes on one H100/H200): bf16 and torch.compile run,
# FlexAttention with windows agrees with SDPA, d12 throughput and MFU, fp8 vs bf16, a short d12 run learns, the patch
# sandbox sees the GPU. One `CHECK name: PASS|FAIL|SKIP` line each; exit code = the number of failures.
#
#   bash scripts/gpu_check.sh              # on a GPU machine (falls back to the CPU sizes without CUDA)
#   bash scripts/gpu_check.sh --cpu        # the CPU fallbacks (the test suite runs these)
#   bash scripts/gpu_check.sh --data DIR   # a corpus for the training checks (default: $NANORESEARCH_DATA, else
#                                          # shards written from this repository's own text: the GPU box is offline)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec timeout 900 "$PY" scripts/gpu_check.py "$@"
