"""
Checkpoints: atomic save, load the latest, and rebuild a trained model (with its tokenizer) from a run dir.

Layout: RUN_DIR/checkpoints/step_000123.pt plus RUN_DIR/checkpoints/LATEST naming the newest. Each file is
written to a temporary name, flushed to disk and renamed into place, and LATEST is updated the same way only
afterwards, so a kill -9 at any moment leaves the previous checkpoint intact and LATEST pointing at a complete
file. Loading falls back to the newest readable file if LATEST is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from model.run_dir import CONFIG, TOKENIZER_DIR, RunDirError, atomic_write_bytes, load_config

CHECKPOINT_DIR = "checkpoints"
LATEST = "LATEST"


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep: int = 2) -> Path:
    """Save `state` as the checkpoint of `step`, point LATEST at it, keep only the newest `keep` files."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:06d}.pt"
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    atomic_write_bytes(directory / LATEST, lambda f: f.write(path.name.encode()))
    for old in sorted(directory.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    # Temp files of a process killed mid-write (kill -9 leaves no chance to clean up). The run dir is locked by
    # this process, so any other process's temp file here is stale.
    for stale in directory.glob(".*.tmp-*"):
        if not stale.name.endswith(f".tmp-{os.getpid()}"):
            stale.unlink(missing_ok=True)
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    directory = Path(run_dir) / CHECKPOINT_DIR
    pointer = directory / LATEST
    if pointer.exists():
        candidate = directory / pointer.read_text().strip()
        if candidate.exists():
            return candidate
    files = sorted(directory.glob("step_*.pt"))
    return files[-1] if files else None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=False)


def load_model(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the trained model of a run dir: (model in eval mode, tokenizer, meta). meta is config.json plus
    the checkpoint's step."""
    from model.config import ModelConfig
    from model.gpt import GPT
    from model.tokenizer import Tokenizer

    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG
    if not config_path.exists():
        raise RunDirError(f"{config_path}: not found (is {run_dir} a run dir made by model.train?)")
    meta = load_config(run_dir)
    try:
        config = ModelConfig(**meta["model"])
    except (KeyError, TypeError) as e:
        raise RunDirError(f"{config_path}: malformed ({e})") from None
    path = latest_checkpoint(run_dir)
    if path is None:
        raise RunDirError(f"{run_dir / CHECKPOINT_DIR}: no checkpoint found")
    state = load_checkpoint(path, device)
    with torch.device(device):
        model = GPT(config)
    model.load_state_dict(state["model"])
    model.eval()
    tokenizer = Tokenizer.load(run_dir / TOKENIZER_DIR)
    return model, tokenizer, {**meta, "step": state.get("step"), "checkpoint": str(path)}
