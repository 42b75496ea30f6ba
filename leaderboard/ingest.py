"""Run dir -> leaderboard rows: what `python -m model.train` wrote, as an Experiment, a Run and its points.

A run dir holds config.json (how it was run), metrics.jsonl (one JSON object per eval) and result.json
(how it ended; written last, so its presence means the run finished). A run the harness launched names
its experiment and rung in config.json; a run made by hand gets an experiment id hashed from its
canonical spec, named after its directory, proposer "manual", rung f"d{depth}".

The files are read through model.run_dir (torch-free: the contract's one owner), and `run_record` is the one
mapping from a run dir's result.json and config.json to a leaderboard Run, here and for the runs the harness watches.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leaderboard.errors import LeaderboardError
from leaderboard.identity import experiment_id
from leaderboard.records import Experiment, Run, check_point
from leaderboard.schema import RUN_STATUSES
from leaderboard.store import Recorded, Store
from model.run_dir import CONFIG, RESULT, Result, RunDirError, load_object, load_points

FINISHED_STATUSES = tuple(s for s in RUN_STATUSES if s != "running")
# The Run columns that come from result.json as they are.
RESULT_COLUMNS = ("val_bpb", "core", "total_training_time", "time_to_target", "tokens", "flops", "peak_memory_bytes",
                  "steps", "tok_per_s")


@dataclass
class RunDir:
    path: Path
    experiment: Experiment
    run: Run
    points: list[dict[str, Any]]


def canonical_spec(config: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same experiment: everything but seed, output dir, device and time stamps."""
    return {"overrides": config.get("overrides") or {}, "depth": config.get("depth"), "tier": config.get("tier"),
            "budget": config.get("budget"), "data": config.get("data"), "code_version": config.get("code_version")}


def run_record(result: Result | dict[str, Any] | None, config: dict[str, Any] | None, **columns: Any) -> Run:
    """The leaderboard Run of a run dir: result.json's numbers (RESULT_COLUMNS), config.json's hardware and the
    config itself, and `columns` (identity, status, reason, times: what the caller knows best). Used for a run dir
    ingested from disk and for a job the harness watched (harness.runs.run_row)."""
    result = result if isinstance(result, Result) else Result.from_dict(result or {})
    config = config or {}
    return Run(hardware=config.get("hardware"), config=config or None,
               **{name: result.get(name) for name in RESULT_COLUMNS}, **columns)


def _load_object(path: Path) -> dict[str, Any]:
    try:
        return load_object(path)
    except RunDirError as e:
        raise LeaderboardError(str(e)) from None


def _load_points(run_dir: Path) -> list[dict[str, Any]]:
    try:  # [] when missing: a run that failed before its first eval has no curve
        return load_points(run_dir, check=check_point)
    except RunDirError as e:
        raise LeaderboardError(str(e)) from None


def _timestamp(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise LeaderboardError(f"{where} {value!r}: expected an ISO 8601 time") from None
    # A time without an offset is what datetime.now().isoformat() writes: local time.
    return parsed if parsed.tzinfo is not None else parsed.astimezone()


def _integer(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise LeaderboardError(f"{where} {value!r}: expected an integer")


def read_run_dir(path: str | Path, *, search_id: int | None = None) -> RunDir:
    """Parse a finished run dir; raises LeaderboardError naming the file and the bad value."""
    path = Path(path)
    if not path.is_dir():
        raise LeaderboardError(f"{path}: not a directory (expected a run dir)")
    config_path, result_path = path / CONFIG, path / RESULT
    if not config_path.exists():
        raise LeaderboardError(f"{path}: no {CONFIG} (expected a run dir written by model.train)")
    if not result_path.exists():
        raise LeaderboardError(f"{path}: no {RESULT} (the run has not finished)")
    config = _load_object(config_path)
    result = Result.from_dict(_load_object(result_path))
    points = _load_points(path)

    depth = _integer(config.get("depth"), f"{config_path}: depth")
    seed = _integer(config.get("seed"), f"{config_path}: seed")
    status = result.status
    if status not in FINISHED_STATUSES:
        raise LeaderboardError(f"{result_path}: status {status!r}: expected one of {', '.join(FINISHED_STATUSES)}")
    overrides = config.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise LeaderboardError(f"{config_path}: overrides {overrides!r}: expected an object")
    try:
        spec_id = experiment_id(canonical_spec(config))
    except ValueError as e:
        raise LeaderboardError(f"{config_path}: {e}") from None
    finished_at = _timestamp(result.get("finished_at"), f"{result_path}: finished_at") or \
        datetime.fromtimestamp(result_path.stat().st_mtime, UTC)

    try:
        experiment = Experiment(
            id=config.get("experiment_id") or spec_id, name=config.get("name") or path.resolve().name,
            tweaks=overrides, proposer="manual", code_version=config.get("code_version"))
        run = run_record(
            result, config, experiment_id=experiment.id, rung=config.get("rung") or f"d{depth}", seed=seed,
            status=status, depth=depth, failure_class=result.get("failure_class"), reason=result.reason,
            world_size=config.get("world_size"),
            started_at=_timestamp(config.get("created_at"), f"{config_path}: created_at"), finished_at=finished_at,
            run_dir=str(path.resolve()), cost=result.get("cost"), search_id=search_id)
    except LeaderboardError as e:
        raise LeaderboardError(f"{path}: {e}") from None
    return RunDir(path=path, experiment=experiment, run=run, points=points)


def ingest_run_dir(store: Store, path: str | Path, *, search_id: int | None = None) -> tuple[RunDir, Recorded]:
    """Record a finished run dir (experiment, run and points in one transaction). Idempotent."""
    parsed = read_run_dir(path, search_id=search_id)
    return parsed, store.record_run(parsed.run, parsed.points, experiment=parsed.experiment)
