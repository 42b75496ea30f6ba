#!/usr/bin/env bash
# Create ./.venv with the right torch build and this project installed (editable, with dev extras).
#
# Why a script and not just `pip install -e .`: on Linux, a bare `pip install torch` resolves the CUDA
# build (several GB of nvidia-* wheels) even on machines without a GPU. So torch is installed first,
# chosen by the machine:
#   - torch already importable in the venv  -> kept as is
#   - an NVIDIA GPU (nvidia-smi works)       -> the default PyPI build (CUDA)
#   - no GPU, a local torch wheel offered by pip's find-links (offline mirrors, CI images) -> that wheel
#   - no GPU otherwise                        -> the CPU build from download.pytorch.org/whl/cpu
# Then the project goes in; its `torch>=...` requirement is already satisfied, so nothing more is pulled.
# Override the choice with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.5.1") and/or TORCH_INDEX_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${NANORESEARCH_VENV:-.venv}
EXTRAS=${NANORESEARCH_EXTRAS:-dev}

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_SPEC:-}" ] || [ -n "${TORCH_INDEX_URL:-}" ]; then
        echo "setup: installing ${TORCH_SPEC:-torch} ${TORCH_INDEX_URL:+from $TORCH_INDEX_URL}"
        "${PIP[@]}" install "${TORCH_SPEC:-torch}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA GPU found, installing the CUDA build of torch from PyPI"
        "${PIP[@]}" install torch
    else
        tmp=$(mktemp -d)
        if "${PIP[@]}" download torch --no-deps --no-index -d "$tmp" >/dev/null 2>&1; then
            wheel=$(ls "$tmp"/torch-*.whl | head -n 1)
            echo "setup: no GPU, installing the local torch wheel $(basename "$wheel")"
            "${PIP[@]}" install "torch==$(basename "$wheel" | cut -d- -f2 | cut -d+ -f1)"
        elif [ "$(uname -s)" = "Linux" ]; then
            echo "setup: no GPU, installing the CPU build of torch from download.pytorch.org"
            "${PIP[@]}" install torch --index-url https://download.pytorch.org/whl/cpu
        else
            echo "setup: installing torch from PyPI (CPU/MPS build on this OS)"
            "${PIP[@]}" install torch
        fi
        rm -rf "$tmp"
    fi
fi

# Reinstall the project only when its requirements changed (keeps repeated `make test` fast).
stamp="$VENV/.nanoresearch-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)-$EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing nanoresearch[$EXTRAS] and its dependencies"
    "${PIP[@]}" install -e ".[$EXTRAS]" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    echo "$want" > "$stamp"
fi
"$VENV/bin/python" -c "import torch; print(f'setup: ready (torch {torch.__version__}, cuda={torch.cuda.is_available()})')"
