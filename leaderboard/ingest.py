"""Run dir -> leaderboard rows: what `python -m model.train` wrote, as an Experiment, a Run and its points.

A run dir holds config.json (how it was run), metrics.jsonl (one JSON object per eval) and result.json
(how it ended; written last, so its presence means the run finished). A run the harness launched names
its experiment and rung in config.json; a run made by hand gets an experiment id hashed from its
canonical spec, named after its directory, proposer "manual", rung f"d{depth}".
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leaderboard.errors import LeaderboardError
from leaderboard.identity import experiment_id
from leaderboard.records import Experiment, Run, check_point
from leaderboard.schema import RUN_STATUSES
from leaderboard.store import Recorded, Store

FINISHED_STATUSES = tuple(s for s in RUN_STATUSES if s != "running")


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


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise LeaderboardError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise LeaderboardError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def _load_object(path: Path) -> dict[str, Any]:
    value = _load_json(path)
    if not isinstance(value, dict):
        raise LeaderboardError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _load_points(path: Path) -> list[dict[str, Any]]:
    if not path.exists():  # a run that failed before its first eval has no curve
        return []
    points = []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise LeaderboardError(f"{path}: cannot read ({e.strerror})") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            point = json.loads(line)
        except json.JSONDecodeError as e:
            raise LeaderboardError(f"{path}:{lineno}: malformed JSON: {e.msg}") from None
        points.append(check_point(point, f"{path}:{lineno}"))
    return points


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
    config_path, result_path = path / "config.json", path / "result.json"
    if not config_path.exists():
        raise LeaderboardError(f"{path}: no config.json (expected a run dir written by model.train)")
    if not result_path.exists():
        raise LeaderboardError(f"{path}: no result.json (the run has not finished)")
    config = _load_object(config_path)
    result = _load_object(result_path)
    points = _load_points(path / "metrics.jsonl")

    depth = _integer(config.get("depth"), f"{config_path}: depth")
    seed = _integer(config.get("seed"), f"{config_path}: seed")
    status = result.get("status")
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
        run = Run(
            experiment_id=experiment.id, rung=config.get("rung") or f"d{depth}", seed=seed, status=status,
            depth=depth, failure_class=result.get("failure_class"), reason=result.get("reason"),
            hardware=config.get("hardware"), world_size=config.get("world_size"),
            started_at=_timestamp(config.get("created_at"), f"{config_path}: created_at"), finished_at=finished_at,
            config=config, run_dir=str(path.resolve()), val_bpb=result.get("val_bpb"), core=result.get("core"),
            total_training_time=result.get("total_training_time"), time_to_target=result.get("time_to_target"),
            tokens=result.get("tokens"), flops=result.get("flops"), peak_memory_bytes=result.get("peak_memory_bytes"),
            steps=result.get("steps"), tok_per_s=result.get("tok_per_s"), cost=result.get("cost"), search_id=search_id)
    except LeaderboardError as e:
        raise LeaderboardError(f"{path}: {e}") from None
    return RunDir(path=path, experiment=experiment, run=run, points=points)


def ingest_run_dir(store: Store, path: str | Path, *, search_id: int | None = None) -> tuple[RunDir, Recorded]:
    """Record a finished run dir (experiment, run and points in one transaction). Idempotent."""
    parsed = read_run_dir(path, search_id=search_id)
    return parsed, store.record_run(parsed.run, parsed.points, experiment=parsed.experiment)
