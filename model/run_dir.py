"""
The run directory: the one module that names its files and reads and writes them. Torch-free, so the harness and
the leaderboard import it cheaply.

Contract (DESIGN.md, "Contracts"), written by `python -m model.train` and `python -m model.sft`:
- config.json (CONFIG): everything needed to reproduce the run, incl. the code version; written (atomically) before
  the first step. A chat run (model.sft) has "chat": true.
- metrics.jsonl (METRICS): one JSON object per evaluation (step, tokens, elapsed_train_s, train_loss, val_bpb,
  tok_per_s, mfu, ...), appended as training goes; the last line may be cut by a kill.
- result.json (RESULT): how the run ended, written last (atomically), so its presence means the run finished (or
  was stopped: status timeout). `Result` holds its keys: the contract's (CONTRACT_KEYS) are always there, null when
  unknown; `reason` when not ok; model.train adds min_val_bpb, tok_per_s, step_time_s; model.sft adds val_loss,
  chat_eval, chatcore; model.evaluate sets `core` later. Keys this module does not know are kept on a rewrite.
- progress.json (PROGRESS): where a training in progress is (step, of how many, smoothed train loss, tok/s since the
  last progress line, the last val_bpb, updated_at in epoch seconds), rewritten (atomically) at each progress line.
  Only live views read it (the search's heartbeat, the dashboard's running jobs); a finished run's numbers are in
  result.json.
- checkpoints/ (model.checkpoint) and tokenizer/ (TOKENIZER_DIR).

Readers come in two kinds: read_* are lenient (None or [] for a missing, unreadable or malformed file: the harness
classifies whatever a killed run left), load_* are strict (RunDirError with a one-line message naming the file and
what is wrong: CLIs and the leaderboard report it). Writers replace a file atomically (temp file beside it, fsync,
os.replace): a kill at any moment leaves the old content or the new, never half of either.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RESULT = "result.json"
PROGRESS = "progress.json"
TOKENIZER_DIR = "tokenizer"

STATUSES = ("ok", "diverged", "failed", "timeout")
# Keys every writer puts in result.json, null when unknown.
CONTRACT_KEYS = ("status", "val_bpb", "core", "total_training_time", "time_to_target", "tokens", "flops", "steps",
                 "peak_memory_bytes")
TRAIN_KEYS = (*CONTRACT_KEYS, "min_val_bpb", "tok_per_s", "step_time_s")  # model.train's result.json
CHAT_KEYS = (*CONTRACT_KEYS, "val_loss", "chat_eval", "chatcore")          # model.sft's result.json


class RunDirError(ValueError):
    """A run dir that cannot be read or loaded; the message is one line naming the path and what is wrong."""


@dataclass
class Result:
    """result.json, typed. A known key is written when it is set (not None) or listed in `keys` (then possibly as
    null); `extra` holds the keys this class does not name, written back unchanged."""
    status: str | None = None               # ok | diverged | failed | timeout
    val_bpb: float | None = None            # at the last evaluation
    core: float | None = None               # when evaluated
    total_training_time: float | None = None  # seconds, nanochat's rule (model.train's docstring)
    time_to_target: float | None = None     # total_training_time when --target was first met
    tokens: int | None = None
    flops: float | None = None
    steps: int | None = None
    peak_memory_bytes: int | None = None
    reason: str | None = None               # when not ok
    min_val_bpb: float | None = None        # model.train
    tok_per_s: float | None = None          # model.train: over the timed steps
    step_time_s: float | None = None        # model.train
    val_loss: float | None = None           # model.sft
    chat_eval: dict[str, float] | None = None  # model.sft: accuracy per task
    chatcore: float | None = None           # model.sft
    keys: tuple[str, ...] = CONTRACT_KEYS
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        known = {name: getattr(self, name) for name in KNOWN_KEYS}
        return {**self.extra, **{k: v for k, v in known.items() if v is not None or k in self.keys}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """The inverse of to_dict: from_dict(d).to_dict() == d for any JSON object d."""
        known = {k: v for k, v in data.items() if k in KNOWN_KEYS}
        return cls(**known, keys=tuple(known), extra={k: v for k, v in data.items() if k not in KNOWN_KEYS})

    def get(self, key: str, default: Any = None) -> Any:
        """A key as result.json has it (known or not), like dict.get."""
        return self.to_dict().get(key, default)


KNOWN_KEYS = tuple(f.name for f in dataclasses.fields(Result) if f.name not in ("keys", "extra"))


# -----------------------------------------------------------------------------------------------------------
# Atomic writes (the only implementation: model.checkpoint writes checkpoints through atomic_write_bytes)

def atomic_write_bytes(path: Path, write: Callable) -> None:
    """Write through `write(file)` to a temp file beside `path`, fsync, then rename over `path`. On any failure the
    temp file is removed and `path` keeps its old content (or stays absent)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a Ctrl-C, a value JSON cannot hold: leave no half-written file behind
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON as every run-dir file is written: indented, keys sorted, a final newline. Serialised before the file is
    opened, so an unserialisable value leaves the old file."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / CONFIG, config)


def write_result(run_dir: str | Path, result: Result) -> None:
    atomic_write_json(Path(run_dir) / RESULT, result.to_dict())


def update_result(run_dir: str | Path, **values: Any) -> Result:
    """Set some keys of result.json, keeping all others (created when missing). Raises RunDirError, writing nothing,
    when the existing file is malformed."""
    path = Path(run_dir) / RESULT
    result = load_result(run_dir) if path.exists() else Result(keys=())
    result = dataclasses.replace(result, **{k: v for k, v in values.items() if k in KNOWN_KEYS},
                                 extra={**result.extra, **{k: v for k, v in values.items() if k not in KNOWN_KEYS}})
    write_result(run_dir, result)
    return result


def remove_result(run_dir: str | Path) -> None:
    """A rerun must not leave a stale result (e.g. timeout) behind while it trains."""
    (Path(run_dir) / RESULT).unlink(missing_ok=True)


def append_point(run_dir: str | Path, point: dict[str, Any]) -> None:
    """One evaluation, as one line of metrics.jsonl."""
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(point) + "\n")


def clear_points(run_dir: str | Path) -> None:
    (Path(run_dir) / METRICS).unlink(missing_ok=True)


def keep_points_before(run_dir: str | Path, step: int) -> None:
    """On resume, drop the evaluations at or after `step` (they are logged again): no duplicates. The kept lines are
    rewritten unchanged; a line cut by a kill goes too (it was written after the checkpoint the run resumes from)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and value.get("step", step) < step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# -----------------------------------------------------------------------------------------------------------
# Readers: load_* strict (RunDirError, one line), read_* lenient (None / [])

def load_object(path: str | Path) -> dict[str, Any]:
    """A JSON object file; RunDirError naming the file when it cannot be read, is not JSON or not an object."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise RunDirError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise RunDirError(f"{path}: malformed JSON: not UTF-8 text") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(value, dict):
        raise RunDirError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_object(path: str | Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing, unreadable, malformed or not an object."""
    try:
        return load_object(path)
    except RunDirError:
        return None


def load_config(run_dir: str | Path) -> dict[str, Any]:
    return load_object(Path(run_dir) / CONFIG)


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    return read_object(Path(run_dir) / CONFIG)


def write_progress(run_dir: str | Path, progress: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / PROGRESS, progress)


def read_progress(run_dir: str | Path) -> dict[str, Any] | None:
    """progress.json, or None (not started, or not readable: a live view just shows nothing for it yet)."""
    return read_object(Path(run_dir) / PROGRESS)


def load_result(run_dir: str | Path) -> Result:
    return Result.from_dict(load_object(Path(run_dir) / RESULT))


def read_result(run_dir: str | Path) -> Result | None:
    data = read_object(Path(run_dir) / RESULT)
    return None if data is None else Result.from_dict(data)


def is_chat(run_dir: str | Path) -> bool:
    """Whether a run dir holds a chat model (made by model.sft); False when its config.json is missing or unusable."""
    return (read_config(run_dir) or {}).get("chat") is True


def load_points(run_dir: str | Path, check: Callable[[Any, str], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """metrics.jsonl, every line (blank lines skipped); [] when there is none (a run that failed before its first
    evaluation). RunDirError names the file and line of a malformed one. `check(value, "path:line")` may validate
    or convert each line's value (by default: it must be an object)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise RunDirError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise RunDirError(f"{path}: malformed JSON: not UTF-8 text") from None
    points = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path}:{lineno}: malformed JSON: {e.msg}") from None
        if check is not None:
            value = check(value, f"{path}:{lineno}")
        elif not isinstance(value, dict):
            raise RunDirError(f"{path}:{lineno}: expected a JSON object, got {type(value).__name__}")
        points.append(value)
    return points


def read_points(run_dir: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl's readable objects; a line cut by a kill (or anything else malformed) is skipped, and a missing
    or unreadable file gives []: the run's result.json is what counts."""
    try:
        lines = (Path(run_dir) / METRICS).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    points = []
    for line in lines:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            points.append(value)
    return points
