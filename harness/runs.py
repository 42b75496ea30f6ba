"""
What a finished job produced: read its run dir, classify failures, and turn it into leaderboard rows.

Statuses: ok, diverged (NaN/inf loss), timeout (over its wall-clock limit, or SIGTERM'd by the scheduler),
oom (out of memory: CUDA OOM, MemoryError, or killed by the kernel's OOM killer), crash (anything else, with
the reason and the log tail recorded). A failed job is a result like any other: the search goes on.

A patched run is judged by its sealed re-score (model/seal.py, run by the job: RUN_DIR/sealed.json), not by what it
reported: not_causal when the causality probe found a logit that saw a later token (or another row), metric_mismatch
when its reported val_bpb (or CORE, or step count) differs from the sealed one beyond SEAL_TOLERANCE, crash when it
could not be re-scored; when they agree the sealed val_bpb is its result. A sandboxed run that failed on a read-only
file system was stopped by the sandbox (a write outside its run dir), not by the machine's disk.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness.jobs import SEALED, Job
from leaderboard.ingest import RESULT_COLUMNS
from model.run_dir import load_object, read_config, read_points, read_result

LOG_TAIL_CHARS = 4000
OOM_PATTERNS = re.compile(r"out of memory|OutOfMemoryError|MemoryError|Cannot allocate memory|oom-kill", re.IGNORECASE)
# The machine, not the change: a full or read-only disk. Named from the training log, where the cause is, rather than
# from the job wrapper's error (which only says that its own result file could not be written).
DISK_PATTERNS = re.compile(r"No space left on device|Disk quota exceeded|Read-only file system")
EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*$")
# How far a patched run's reported val_bpb (and CORE) may be from its sealed re-score: float rounding between two
# ways of summing the same logits is ~1e-8 bpb on CPU (measured: 2.8e-9 at depth 1); the smallest effects worth
# finding are ~2e-4 bpb. (The decision uses the sealed value either way.)
SEAL_TOLERANCE = 1e-4
SANDBOX_BLOCKED = "blocked by the sandbox"


@dataclass
class Outcome:
    status: str                       # ok | diverged | timeout | oom | crash
    reason: str | None = None
    result: dict | None = None        # result.json (model.run_dir.Result.to_dict())
    config: dict | None = None        # config.json
    points: list[dict] = field(default_factory=list)  # metrics.jsonl
    log_tail: str | None = None
    wall_s: float | None = None
    loaded: bool | None = None        # trained far below its rung's calibrated throughput (None: no calibration)
    run_id: int | None = None         # its leaderboard row, for one recorded by an earlier session (points not read yet)
    sealed: dict | None = None        # a patched run's sealed re-score, with what it reported

    @classmethod
    def from_row(cls, row: dict) -> Outcome:
        """A run an earlier session recorded (a leaderboard runs row), as the outcome this session reads. Its learning
        curve stays in the database until asked for (`points` empty, `run_id` set)."""
        result = {k: row[k] for k in RESULT_COLUMNS if row.get(k) is not None}
        started, finished = row.get("started_at"), row.get("finished_at")
        wall_s = (finished - started).total_seconds() if started and finished else None
        return cls(status=row["status"], reason=row.get("reason"), result=result, loaded=row.get("loaded"),
                   run_id=row.get("id"), wall_s=wall_s, sealed=row.get("sealed"))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def val_bpb(self) -> float | None:
        return (self.result or {}).get("val_bpb")

    @property
    def tok_per_s(self) -> float | None:
        return (self.result or {}).get("tok_per_s")


def is_loaded(tok_per_s: float | None, expected: float | None, fraction: float) -> bool | None:
    """Did a run train on a loaded (or slower) machine: below `fraction` of the throughput its rung was calibrated
    at? None when either number is missing. A compute-budgeted result stands either way; its speed does not."""
    if tok_per_s is None or not expected:
        return None
    return tok_per_s < fraction * expected


def log_tail(path: Path | str | None, chars: int = LOG_TAIL_CHARS) -> str | None:
    if not path or not Path(path).exists():
        return None
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - chars))
        return f.read().decode("utf-8", errors="replace")


def failed_for_the_machine(status: str | None, reason: str | None) -> bool:
    """A run that crashed because its disk was full or read-only: not a result of its change. A resumed search runs
    it again (from its checkpoint) instead of counting the failure."""
    return (status == "crash" and bool(reason and DISK_PATTERNS.search(reason))
            and not reason.startswith(SANDBOX_BLOCKED))


def classify(returned: dict | None, error: BaseException | None, result: dict | None, tail: str | None) -> tuple[str, str | None]:
    """(status, reason) of a job from what the job function returned (or raised), result.json and the log."""
    if returned and returned.get("timed_out"):
        return "timeout", f"exceeded its wall-clock limit after {returned.get('wall_s', 0):.0f}s"
    status = (result or {}).get("status")
    if status == "ok":
        return "ok", None
    if status == "diverged":
        return "diverged", result.get("reason")
    rc = returned.get("returncode") if returned else None
    text = tail or ""
    if OOM_PATTERNS.search(text) or rc in (-9, 137):
        return "oom", "out of memory" + (f" (exit {rc})" if rc is not None else "")
    if status == "timeout" or rc in (-15, 143):
        return "timeout", (result or {}).get("reason") or "terminated (SIGTERM)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    disk = [line for line in lines if DISK_PATTERNS.search(line)]
    if disk:
        return "crash", disk[-1][:500]
    if error is not None:  # the job wrapper failed: the training's own last exception, if it logged one, is the cause
        cause = next((line for line in reversed(lines) if EXCEPTION_LINE.match(line)), None)
        return "crash", (cause or f"{type(error).__name__}: {error}".splitlines()[0])[:500]
    reason = (result or {}).get("reason")
    if not reason:
        last = [line for line in text.strip().splitlines() if line.strip()]
        reason = (last[-1] if last else "no output") + (f" (exit {rc})" if rc is not None else "")
    return "crash", reason[:500]


def disk_problem(run_dir: Path, min_free: int = 1 << 20) -> str | None:
    """What is wrong with the disk a run dir is on, if anything: read-only, or less than `min_free` bytes left. (A
    full disk can leave no log to read the cause from, nor a result file from the job wrapper.)"""
    existing = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if existing is None:
        return None
    try:
        fs = os.statvfs(existing)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return f"Read-only file system: {existing}"
    if fs.f_bavail * fs.f_frsize < min_free:
        return f"No space left on device: {fs.f_bavail * fs.f_frsize} bytes free where {run_dir} is"
    return None


def read_outcome(job: Job, returned: dict | None = None, error: BaseException | None = None) -> Outcome:
    run_dir = Path(job.run_dir)
    parsed = read_result(run_dir)  # None when missing or unreadable: a killed run may leave none
    result = parsed.to_dict() if parsed else None
    tail = log_tail((returned or {}).get("log") or run_dir / "train.log")
    status, reason = classify(returned, error, result, tail)
    disk = disk_problem(run_dir) if status == "crash" else None
    if disk and not DISK_PATTERNS.search(reason or ""):
        reason = f"{disk} ({reason})"[:500]
    elif status == "crash" and job.patched and job.sandbox and not disk and DISK_PATTERNS.search(reason or ""):
        reason = f"{SANDBOX_BLOCKED} (a write outside its run dir): {reason}"[:500]
    sealed = None
    if status == "ok" and job.patched:
        scored = (returned or {}).get("sealed")
        if scored is None:  # collected by a later session: the job wrote it to the run dir
            try:
                scored = load_object(run_dir / SEALED)
            except Exception:  # missing or unreadable: not re-scored, so not trusted
                scored = {"error": f"no sealed re-score in {run_dir / SEALED}"}
        status, reason, result, sealed = sealed_outcome(result, scored, sandboxed=job.sandbox)
    return Outcome(status=status, reason=reason, result=result, config=read_config(run_dir),
                   points=read_points(run_dir), log_tail=tail,
                   wall_s=(returned or {}).get("wall_s"), sealed=sealed)


def sealed_outcome(result: dict, scored: dict, sandboxed: bool) -> tuple[str, str | None, dict, dict]:
    """(status, reason, result, the sealed record) of a patched run that reported ok, from its sealed re-score. The
    result keeps the run's numbers except val_bpb (and core), which become the sealed ones."""
    sealed = {**scored, "reported_val_bpb": result.get("val_bpb"), "reported_core": result.get("core"),
              "reported_steps": result.get("steps"), "sandboxed": sandboxed, "tolerance": SEAL_TOLERANCE}
    if "error" in scored or not isinstance(scored.get("val_bpb"), int | float):
        return "crash", str(scored.get("error") or "the sealed re-score gave no val_bpb")[:500], result, sealed
    scored_result = {**result, "val_bpb": scored["val_bpb"]}
    if scored.get("core") is not None:
        scored_result["core"] = scored["core"]
    if not scored.get("causal"):
        return ("not_causal", f"the causality probe failed: a logit at a position <= t changed by "
                f"{scored.get('probe_max_diff', float('nan')):.3g} (tolerance {scored.get('probe_tolerance', 0):.3g}) "
                "when the tokens after t, or another row of the batch, changed", scored_result, sealed)
    mismatches = []
    if result.get("steps") is not None and scored.get("steps") != result["steps"]:
        mismatches.append(f"its checkpoint is of step {scored.get('steps')}, it reported {result['steps']} steps")
    for key in ("val_bpb", "core"):
        reported, sealed_value = result.get(key), scored.get(key)
        if sealed_value is None and key == "core":
            continue
        if reported is None or abs(reported - sealed_value) > SEAL_TOLERANCE:
            mismatches.append(f"it reported {key} {reported if reported is None else f'{reported:.6f}'}, the sealed "
                              f"re-score gives {sealed_value:.6f}")
    if mismatches:
        return "metric_mismatch", ("; ".join(mismatches) + f" (tolerance {SEAL_TOLERANCE:g})")[:500], scored_result, sealed
    return "ok", None, scored_result, sealed


def run_row(job: Job, outcome: Outcome | None, search_id: int | None, started_at: datetime | None,
            finished_at: datetime | None = None):
    """A leaderboard Run for this job: 'running' when outcome is None, else its final state."""
    from leaderboard import Run
    from leaderboard.ingest import run_record
    common = dict(experiment_id=job.experiment_id, rung=job.rung.name, seed=job.seed, depth=job.rung.depth,
                  world_size=job.rung.devices, run_dir=str(job.run_dir), search_id=search_id, started_at=started_at)
    if outcome is None:
        return Run(status="running", **common)
    return run_record(outcome.result, outcome.config, status=outcome.status,
                      failure_class=None if outcome.ok else outcome.status, reason=outcome.reason,
                      finished_at=finished_at or datetime.now(UTC), loaded=outcome.loaded, cost=None,
                      log_tail=None if outcome.ok else outcome.log_tail, sealed=outcome.sealed, **common)
