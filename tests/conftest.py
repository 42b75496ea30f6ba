"""Shared test fixtures. Sections are owned by the modules they serve; append yours below."""

import os
import subprocess
from pathlib import Path

# One intra-op thread per test process, set before torch is imported anywhere: the suite runs two pytest
# workers on two cores and many tests spawn training subprocesses (which inherit this); with more threads than
# cores, tiny tensor ops spend their time spinning (measured: 30 tiny optimizer steps took 5.4 s with 2 threads on
# a busy machine vs 0.5 s with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO_ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------------
# Data and tokenizer (model/sources.py, model/loader.py, model/tokenizer.py)


@pytest.fixture(scope="session", autouse=True)
def nanoresearch_home(tmp_path_factory) -> Path:
    """Every test session gets its own NANORESEARCH_HOME, so tests never read or write ~/.cache."""
    home = tmp_path_factory.mktemp("nanoresearch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANORESEARCH_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def sandboxed() -> None:
    """Patched code runs in the bubblewrap sandbox (harness/sandbox.py): skip without one, or fail when
    NANORESEARCH_REQUIRE_SANDBOX=1 (CI: scripts/ci_sandbox.sh installs it)."""
    from harness.sandbox import unavailable
    if why := unavailable():
        if os.environ.get("NANORESEARCH_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"NANORESEARCH_REQUIRE_SANDBOX=1 but {why}")
        pytest.skip(f"no sandbox for patched runs: {why}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared pretraining shards: $NANORESEARCH_DATA if it is a directory, else ../shared/data/pretrain."""
    env = os.environ.get("NANORESEARCH_DATA")
    path = Path(env) if env and Path(env).is_dir() else REPO_ROOT.parent / "shared" / "data" / "pretrain"
    if not path.is_dir() or not any(path.glob("*.parquet")):
        pytest.skip(f"shared pretraining data not found at {path} (set NANORESEARCH_DATA to a shard directory)")
    return path


TINY_VOCAB, TINY_CHARS = 1024, 2_500_000


@pytest.fixture(scope="session")
def tiny_tokenizer(shared_data, nanoresearch_home):
    """One small tokenizer (vocab 1024, 2.5M training characters) shared by every test; trains in ~2 s."""
    from model.tokenizer import get_tokenizer

    return get_tokenizer(str(shared_data), vocab_size=TINY_VOCAB, max_chars=TINY_CHARS, progress=False)


def tiny_tier(description: str, rest: str, unembedding_lr: float = 0.1, eval_every: int = 0) -> str:
    """A tier TOML for harness tests: its [baseline] trains depth-1/2 models in a few seconds with the tokenizer
    settings of `tiny_tokenizer` (so runs reuse that cached tokenizer); `rest` adds [statistics] and [[rungs]].
    `eval_every` > 0 records a learning curve (compute multipliers need one)."""
    return f"""
name = "tiny"
description = "{description}"
train_tier = "cpu"
[baseline]
vocab_size = {TINY_VOCAB}
tokenizer_max_chars = {TINY_CHARS}
sequence_len = 64
head_dim = 64
device_batch_size = 4
total_batch_size = 256
eval_tokens = 2048
eval_every = {eval_every}
log_every = 0
warmup_steps = 2
embedding_lr = 3.0
unembedding_lr = {unembedding_lr}
scalar_lr = 8.0
matrix_lr = 0.32
""" + rest


# ---------------------------------------------------------------------------------------------------------------
# Patch mode (harness/patches.py, harness/sandbox.py, model/seal.py): tests/test_agent.py, tests/test_sealed.py

@pytest.fixture(scope="module")
def clone(tmp_path_factory, sandboxed) -> tuple[Path, str]:
    """A clone of this repository, standing for the user's: patches are applied to worktrees of its HEAD."""
    path = tmp_path_factory.mktemp("user-repo") / "repo"
    subprocess.run(["git", "clone", "--quiet", "--local", str(REPO_ROOT), str(path)], check=True, timeout=120)
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()[:12]
    return path, head


@pytest.fixture
def tokenizer_dir(shared_data, tiny_tokenizer) -> Path:
    """Where `tiny_tokenizer` is cached (a patched job is given it with --tokenizer)."""
    from model.sources import resolve_source
    from model.tokenizer import cached_tokenizer_dir
    return cached_tokenizer_dir(resolve_source(str(shared_data)), 1024, 2_500_000)
