"""Store: the one door to the leaderboard database (SQLite by default, PostgreSQL by URL).

    store = Store()                                # NANORESEARCH_DB, else sqlite:///nanoresearch.db
    store = Store("postgresql://me@db:5432/lb")   # shared by many workers
    store.record_run(Run(...), points, experiment=Experiment(...))
    store.leaderboard("gpt2-speedrun")             # -> list of dicts

Every write is one short transaction, retried with backoff when the database is busy (SQLite's single
writer, PostgreSQL serialization failures and deadlocks), and written as an upsert so that recording
the same thing twice, from one process or eight, is a no-op rather than a duplicate or an error.
Queries return plain lists of dicts (column name -> value; JSON columns as Python objects, timestamps
as timezone-aware UTC datetimes): `pandas.DataFrame(rows)` where a frame is wanted.
Errors a user can fix raise `LeaderboardError` with a one-line message.
The store records and queries rows, nothing more: what a page or a command shows made of them (a search's
summary, the best runs to chat with, their "why" lines) is built in leaderboard/views.py.
"""

import json
import math
import os
import random
import time
import urllib.parse
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url

from leaderboard import schema
from leaderboard.errors import LeaderboardError, SchemaError
from leaderboard.migrations import bring_up_to_date, check_version, read_version
from leaderboard.records import Decision, Entry, Experiment, RejectedProposal, Run, Track, as_row, check_point

DEFAULT_URL = "sqlite:///nanoresearch.db"
URL_HELP = "expected sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"

SQLITE_BUSY_TIMEOUT_MS = 30_000
RETRY_SECONDS = 120.0  # give up on a busy database after this long (a writer holding it that long is stuck)
# Any fixed 64-bit key: serializes schema creation/upgrades among processes opening one PostgreSQL database.
PG_SCHEMA_LOCK_KEY = 0x6E616E6F7265
_WRITE = "nanoresearch_write"  # execution option: this transaction will write (SQLite: BEGIN IMMEDIATE)
# Light columns of `runs`: listings skip the bulky config and log tail unless details are asked for.
_RUN_SUMMARY_COLUMNS = [c for c in schema.runs.c if c.name not in ("config", "log_tail")]
# ... and of `experiments`: lookups by id skip the patch (a whole diff).
_EXPERIMENT_SUMMARY_COLUMNS = [c for c in schema.experiments.c if c.name != "patch"]
_IN_CHUNK = 500  # ids per IN list (SQLite caps bound parameters)

T = TypeVar("T")


class Recorded(NamedTuple):
    run_id: int
    action: str  # "inserted" | "completed" (a running run got its results) | "unchanged"


def resolve_url(url: str | None = None) -> URL:
    """The database URL: `url`, else $NANORESEARCH_DB, else a SQLite file in the working directory."""
    text = url or os.environ.get("NANORESEARCH_DB") or DEFAULT_URL
    try:
        parsed = make_url(text)
    except (sa.exc.ArgumentError, ValueError):
        raise LeaderboardError(f"database URL {text!r}: {URL_HELP}") from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project ships psycopg2.
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg2")
    elif backend != "sqlite":
        raise LeaderboardError(f"database URL {parsed.render_as_string()!r}: unsupported backend {backend!r}; {URL_HELP}")
    elif parsed.database and parsed.database.startswith("~"):  # sqlite3 would take "~" as a directory name
        parsed = parsed.set(database=str(Path(parsed.database).expanduser()))
    return parsed


def _check_sqlite_path(url: URL) -> None:
    """Fail early, naming the path, where sqlite3 would only say 'unable to open database file'."""
    if url.database in (None, "", ":memory:") or url.database.startswith("file:"):
        return
    path = Path(url.database).absolute()
    if path.is_dir():
        raise LeaderboardError(f"SQLite database {path} is a directory: expected a file path")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise LeaderboardError(f"SQLite database {path}: {parent} is not a directory")
    if not parent.is_dir():
        raise LeaderboardError(f"SQLite database {path}: directory {parent} does not exist")
    # WAL mode writes side files (-wal, -shm) beside the database, so the directory must be writable.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LeaderboardError(f"SQLite database {path}: directory {parent} is not writable")


def _sqlite_file_of(database: str) -> Path:
    """The file a SQLite database name points at: a path, or a `file:` URI (file:PATH, file:///PATH,
    file://localhost/PATH; percent-escapes undone)."""
    if not database.startswith("file:"):
        return Path(database).absolute()
    rest = database[len("file:"):]
    if rest.startswith("//"):  # an authority (empty or localhost) before the path
        rest = rest[2:]
        rest = rest[rest.index("/"):] if "/" in rest else rest
    return Path(urllib.parse.unquote(rest)).absolute()


def _on_read_only_file_system(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _sqlite_read_only_url(url: URL) -> URL:
    """The URL that opens an existing SQLite file for reading only; a missing file is an error instead of a
    new empty database, and the caller's own URI mode (e.g. rwc, which creates) gives way.

    Which mode depends on where the file is, because a WAL database's readers need its -wal and -shm side
    files: SQLite creates them when they are missing, and a connection opened mode=ro cannot remove them
    again, so a reader would leave them behind for good. So:
    - file and directory writable: mode=rw with `PRAGMA query_only` (set on connect), which refuses every
      write statement; the last connection to close removes the side files it made, as a writer's would.
      (If a crashed writer left committed pages in the -wal, that close also copies them into the database
      file: its content is unchanged, only where it is kept.)
    - a read-only file system: mode=ro with immutable=1. Nobody can write there, so there is nothing to
      lock or to watch for, and SQLite reads the file as it is (mode=ro alone cannot open a WAL database
      whose side files are missing and cannot be made).
    - otherwise (a file we may not write, e.g. another user's): mode=ro.
    """
    if url.database in (None, "", ":memory:"):
        raise LeaderboardError(f"SQLite database {url.database or ':memory:'!r}: a read-only store needs a database file")
    path = _sqlite_file_of(url.database)
    if path.is_dir():
        raise LeaderboardError(f"SQLite database {path} is a directory: expected a file path")
    if not path.is_file():
        raise LeaderboardError(f"SQLite database {path} does not exist: expected an existing file (read-only)")
    query = {k: v for k, v in url.query.items() if k not in ("mode", "immutable")}
    if _on_read_only_file_system(path):
        query.update(mode="ro", immutable="1")
    elif os.access(path, os.R_OK | os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK):
        query.update(mode="rw")
    else:
        query.update(mode="ro")
    return url.set(database="file:" + urllib.parse.quote(str(path)), query={**query, "uri": "true"})


def _json_dumps(value: Any) -> str:
    # NaN is not JSON (PostgreSQL's JSONB refuses it): store it as null, like the Real columns do.
    def finite(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [finite(x) for x in v]
        return v
    return json.dumps(finite(value), allow_nan=False)


def _sqlite_on_connect(dbapi_connection, connection_record) -> None:
    # Let SQLAlchemy's "begin" hook below emit BEGIN (pysqlite's own transaction handling skips it for
    # SELECTs and DDL); WAL lets the dashboard read while workers write; the busy timeout makes writers
    # queue for the lock instead of failing at once; foreign keys are off by default in SQLite.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash never corrupts, only fsyncs less
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_on_connect_read_only(dbapi_connection, connection_record) -> None:
    # No journal_mode change (that writes the file header); query_only also covers a caller's own file: URI.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA query_only = ON")
    cursor.close()


def _postgresql_on_begin_read_only(conn: sa.Connection) -> None:
    conn.exec_driver_sql("SET TRANSACTION READ ONLY")


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # A write transaction takes the write lock up front: one that started as a reader and upgrades
    # later fails with "database is locked" at once if another writer committed in between.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def _retryable(error: sa.exc.DBAPIError) -> bool:
    if error.connection_invalidated:
        return True
    if getattr(error.orig, "pgcode", None) in ("40001", "40P01"):  # serialization failure, deadlock
        return True
    message = str(error.orig).lower()
    return "database is locked" in message or "database is busy" in message


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _rows(result: sa.Result) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in result]


def _chunks(ids: list[T]) -> Iterable[list[T]]:
    return (ids[i:i + _IN_CHUNK] for i in range(0, len(ids), _IN_CHUNK))


def _pick(table: sa.Table, columns: Iterable[str] | None, default: Iterable[sa.Column]) -> list[sa.Column]:
    """What a query selects: the named columns of `table` (for a caller that reads a few columns of many rows),
    else `default`."""
    if columns is None:
        return list(default)
    names = list(columns)
    if unknown := [name for name in names if name not in table.c]:
        raise ValueError(f"table {table.name} has no column {', '.join(unknown)}")
    return [table.c[name] for name in names]


# The runs columns a running run's live progress fills in (record_progress) until its final record replaces them.
PROGRESS_COLUMNS = ("steps", "tok_per_s", "val_bpb")


class Store:
    """A connection to the leaderboard database; creates or upgrades the schema on open.

    `read_only=True` (the dashboard) never writes: the database must exist (a SQLite file is not created),
    its schema is neither created nor upgraded (`schema_version` is what was found: 0 for a database
    without our tables, whose queries then fail, so check it first), every transaction is read-only
    on the server, and record_* methods raise LeaderboardError.
    """

    def __init__(self, url: str | None = None, *, connect_timeout: int = 10, read_only: bool = False):
        self.url = resolve_url(url)
        self.url_text = self.url.render_as_string(hide_password=True)
        self.dialect = self.url.get_backend_name()
        self.read_only = read_only
        try:
            if self.dialect == "sqlite":
                if read_only:
                    # No pool: each read's connection closes after it, so no side file outlives the read.
                    self._engine = sa.create_engine(_sqlite_read_only_url(self.url), json_serializer=_json_dumps,
                                                    poolclass=sa.pool.NullPool)
                    event.listen(self._engine, "connect", _sqlite_on_connect_read_only)
                else:
                    _check_sqlite_path(self.url)
                    self._engine = sa.create_engine(self.url, json_serializer=_json_dumps)
                    event.listen(self._engine, "connect", _sqlite_on_connect)
                event.listen(self._engine, "begin", _sqlite_on_begin)
                self._insert = sqlite.insert
            else:
                self.dialect = "postgresql"
                connect_args = {} if "connect_timeout" in self.url.query else {"connect_timeout": connect_timeout}
                self._engine = sa.create_engine(self.url, json_serializer=_json_dumps, connect_args=connect_args)
                if read_only:
                    event.listen(self._engine, "begin", _postgresql_on_begin_read_only)
                self._insert = postgresql.insert
        except (ImportError, sa.exc.NoSuchModuleError) as e:
            raise LeaderboardError(f"database URL {self.url_text!r}: its driver is not installed ({e}); {URL_HELP}") from None
        try:
            self.schema_version = self._open_schema()
        except LeaderboardError:
            self._engine.dispose()
            raise

    def _open_schema(self) -> int:
        """Check the stored schema version; create or upgrade the schema when needed. Returns the current
        version (the version found is checked first, so a newer database is never touched)."""
        what = f"SQLite database {self.url.database}" if self.dialect == "sqlite" else f"database {self.url_text}"
        found = self._transact(read_version, write=False, failure=f"cannot open {what}")
        check_version(found)
        if self.read_only:
            if 0 < found < schema.SCHEMA_VERSION:
                raise SchemaError(f"{what} has schema version {found}, older than this nanoresearch's "
                                  f"({schema.SCHEMA_VERSION}), and is open read-only: open it once for writing "
                                  f"(e.g. `python -m leaderboard ingest`) to upgrade it")
            return found
        if found < schema.SCHEMA_VERSION:
            def create_or_upgrade(conn: sa.Connection) -> int:
                if self.dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_SCHEMA_LOCK_KEY})
                return bring_up_to_date(conn)
            self._transact(create_or_upgrade, write=True)
        return schema.SCHEMA_VERSION

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url_text!r})"

    def _transact(self, work: Callable[[sa.Connection], T], *, write: bool = True, failure: str = "") -> T:
        """Run `work` in one transaction, retrying the whole transaction while the database is busy.
        Errors become a LeaderboardError starting with `failure` (default: "database error on URL")."""
        failure = failure or f"database error on {self.url_text}"
        if write and self.read_only:
            raise LeaderboardError(f"database {self.url_text} is open read-only: cannot write to it")
        delay, deadline = 0.01, time.monotonic() + RETRY_SECONDS
        while True:
            try:
                with self._engine.connect() as conn:
                    if write:
                        conn.execution_options(**{_WRITE: True})
                    with conn.begin():
                        return work(conn)
            except sa.exc.DBAPIError as e:
                if _retryable(e) and time.monotonic() < deadline:
                    time.sleep(delay * (0.5 + random.random()))  # jitter: contending writers spread out
                    delay = min(delay * 2, 1.0)
                    continue
                raise LeaderboardError(f"{failure}: {_first_line(e)}") from e
            except sa.exc.StatementError as e:  # a value the driver or a column type refused
                raise LeaderboardError(f"{failure}: {_first_line(e)}") from e

    # ---------------------------------------------------------------- writes

    def _insert_experiment(self, conn: sa.Connection, experiment: Experiment, search_id: int | None) -> None:
        row = as_row(experiment)
        row["created_at"] = row["created_at"] or schema.utcnow()
        conn.execute(self._insert(schema.experiments).values(row).on_conflict_do_nothing(index_elements=["id"]))
        if search_id is not None:
            conn.execute(self._insert(schema.proposals)
                         .values(search_id=search_id, experiment_id=experiment.id, created_at=schema.utcnow())
                         .on_conflict_do_nothing(index_elements=["search_id", "experiment_id"]))

    def record_experiment(self, experiment: Experiment, *, search_id: int | None = None) -> str:
        """Record an experiment (a no-op when its id exists) and, with `search_id`, that the search
        proposed it. Returns the experiment id."""
        self._transact(lambda conn: self._insert_experiment(conn, experiment, search_id))
        return experiment.id

    def _insert_points(self, conn: sa.Connection, run_id: int, rows: list[dict[str, Any]]) -> None:
        if rows:
            # RETURNING makes SQLAlchemy batch the rows into multi-VALUES statements ("insertmanyvalues");
            # without it an ON CONFLICT insert goes row by row, one round trip each on PostgreSQL.
            stmt = (self._insert(schema.metric_points).on_conflict_do_nothing(index_elements=["run_id", "step"])
                    .returning(schema.metric_points.c.step))
            conn.execute(stmt, [{**row, "run_id": run_id} for row in rows]).all()

    def record_run(self, run: Run, points: Iterable[dict[str, Any]] = (), *,
                   experiment: Experiment | None = None) -> Recorded:
        """Record a run and its metric points in one transaction.

        New (experiment, rung, seed): inserted. Already recorded as running and now finished: completed
        (results and points together, or not at all). Anything else (a finished run recorded again, a
        running run recorded running again): unchanged. `experiment`, when given, is recorded first in
        the same transaction; otherwise the run's experiment must already exist.
        """
        rows = [check_point(p, f"run ({run.experiment_id}, {run.rung}, seed {run.seed}) metric point {i}")
                for i, p in enumerate(points)]
        row = as_row(run)
        key = {"experiment_id": run.experiment_id, "rung": run.rung, "seed": run.seed}

        def work(conn: sa.Connection) -> Recorded:
            if experiment is not None:
                self._insert_experiment(conn, experiment, run.search_id)
            inserted = conn.execute(
                self._insert(schema.runs).values(row)
                .on_conflict_do_nothing(index_elements=list(key)).returning(schema.runs.c.id)).scalar()
            if inserted is not None:
                self._insert_points(conn, inserted, rows)
                return Recorded(inserted, "inserted")
            runs = schema.runs.c
            run_id, status = conn.execute(sa.select(runs.id, runs.status).where(
                runs.experiment_id == run.experiment_id, runs.rung == run.rung, runs.seed == run.seed)).one()
            if status != "running" or not run.finished:
                return Recorded(run_id, "unchanged")
            # Completing: fields this record leaves empty (e.g. started_at) keep what the running row had, except
            # the live progress (record_progress), which the final record replaces even with nothing: a run that
            # crashed has no val_bpb, whatever it showed while running. The status guard makes a second,
            # concurrent completion update nothing.
            values = {k: v for k, v in row.items() if (v is not None or k in PROGRESS_COLUMNS) and k not in key}
            updated = conn.execute(sa.update(schema.runs).where(runs.id == run_id, runs.status == "running")
                                   .values(values))
            if updated.rowcount == 0:
                return Recorded(run_id, "unchanged")
            self._insert_points(conn, run_id, rows)
            return Recorded(run_id, "completed")

        return self._transact(work)

    def annotate_experiment(self, experiment_id: str, notes: str | None, tags: list[str]) -> None:
        """Set an experiment's notes and tags (a researcher's, from the dashboard): with `edit_insight`, the only writes
        the dashboard makes, each through a store it opens for it alone."""
        clean = sorted({t.strip() for t in tags if t and t.strip()})
        bad = [t for t in clean if len(t) > 64]
        if bad:
            raise LeaderboardError(f"tag {bad[0][:80]!r}: expected at most 64 characters")
        e = schema.experiments.c
        updated = self._transact(lambda conn: conn.execute(sa.update(schema.experiments).where(e.id == experiment_id)
                                                           .values(notes=notes or None, tags=clean or None)).rowcount)
        if not updated:
            raise LeaderboardError(f"experiment {experiment_id!r}: not in this database")

    def record_progress(self, experiment_id: str, rung: str, seed: int, *, steps: int | None,
                        tok_per_s: float | None, val_bpb: float | None) -> bool:
        """A running run's latest step, throughput and val_bpb so far (what live views show); the run's final
        record replaces them. Only a run still recorded as running changes: True when it did."""
        runs = schema.runs.c
        values = {"steps": steps, "tok_per_s": tok_per_s, "val_bpb": val_bpb}
        return self._transact(lambda conn: conn.execute(sa.update(schema.runs).where(
            runs.experiment_id == experiment_id, runs.rung == rung, runs.seed == seed, runs.status == "running")
            .values(values)).rowcount > 0)

    def reopen_run(self, experiment_id: str, rung: str, seed: int, started_at: datetime | None = None) -> bool:
        """A failed run trained again (it failed for the machine, e.g. a full disk, not for its change): back to
        running, its results, failure and metric points cleared, so its next completion is recorded. True if a
        failed run was reopened; a run that is running or finished ok is left alone."""
        runs = schema.runs.c

        def work(conn: sa.Connection) -> bool:
            row = conn.execute(sa.select(runs.id, runs.status).where(
                runs.experiment_id == experiment_id, runs.rung == rung, runs.seed == seed)).one_or_none()
            if row is None or row.status in ("running", "ok"):
                return False
            conn.execute(sa.delete(schema.metric_points).where(schema.metric_points.c.run_id == row.id))
            cleared = {c.name: None for c in schema.runs.c if c.name not in (
                "id", "experiment_id", "rung", "seed", "depth", "world_size", "run_dir", "search_id", "started_at")}
            conn.execute(sa.update(schema.runs).where(runs.id == row.id).values(
                {**cleared, "status": "running", **({"started_at": started_at} if started_at else {})}))
            return True

        return self._transact(work)

    def add_metric_points(self, run_id: int, points: Iterable[dict[str, Any]]) -> None:
        """Append points to a run as they come (live curves); steps already recorded are kept as they are."""
        rows = [check_point(p, f"run {run_id} metric point {i}") for i, p in enumerate(points)]
        self._transact(lambda conn: self._insert_points(conn, run_id, rows))

    def start_search(self, name: str, *, tier: str | None = None, space: str | None = None,
                     proposer: str | None = None, config: dict[str, Any] | None = None) -> int:
        """Create the search `name`, or reopen it (status back to running) when it exists: a resumed search
        keeps its id, runs and decisions. Returns its id."""
        def work(conn: sa.Connection) -> int:
            conn.execute(self._insert(schema.searches).values(
                name=name, tier=tier, space=space, proposer=proposer, config=config, status="running",
                started_at=schema.utcnow()).on_conflict_do_nothing(index_elements=["name"]))
            return conn.execute(sa.update(schema.searches).where(schema.searches.c.name == name)
                                .values(status="running", finished_at=None, reason=None)
                                .returning(schema.searches.c.id)).scalar_one()
        return self._transact(work)

    def finish_search(self, search_id: int, status: str = "finished", reason: str | None = None,
                      summary: str | None = None) -> None:
        """End a search with its status (finished, interrupted, failed), for a failure why, and the summary it
        printed (kept for its report card; a search that ends without one keeps the last it had)."""
        values = {"status": status, "finished_at": schema.utcnow(), "reason": reason,
                  **({"summary": summary} if summary is not None else {})}
        self._transact(lambda conn: conn.execute(sa.update(schema.searches).where(schema.searches.c.id == search_id)
                                                 .values(**values)))

    def record_decision(self, decision: Decision) -> int:
        """Record a ladder decision with its statistics (every decision is kept: more_seeds, then promote)."""
        row = as_row(decision)
        row["created_at"] = row["created_at"] or schema.utcnow()
        return self._transact(lambda conn: conn.execute(
            sa.insert(schema.decisions).values(row).returning(schema.decisions.c.id)).scalar_one())

    def record_rejected_proposal(self, rejected: RejectedProposal) -> int:
        """Record a proposal the search turned away and why (every one is kept). Returns its id."""
        row = as_row(rejected)
        row["created_at"] = row["created_at"] or schema.utcnow()
        return self._transact(lambda conn: conn.execute(
            sa.insert(schema.rejected_proposals).values(row).returning(schema.rejected_proposals.c.id)).scalar_one())

    def record_hypothesis(self, search_id: int, experiment_id: str, statement: str,
                          falsification: str | None = None) -> int:
        """The hypothesis a search's proposal states, pending until its decisions are in; recording it again (a
        resumed search) keeps the first. Returns its id."""
        if not isinstance(statement, str) or not statement.strip():
            raise LeaderboardError(f"hypothesis statement {statement!r}: expected a non-empty string")
        h = schema.hypotheses.c

        def work(conn: sa.Connection) -> int:
            conn.execute(self._insert(schema.hypotheses).values(
                search_id=search_id, experiment_id=experiment_id, statement=statement.strip(),
                falsification=(falsification or "").strip() or None, status="pending", created_at=schema.utcnow())
                .on_conflict_do_nothing(index_elements=["search_id", "experiment_id"]))
            return conn.execute(sa.select(h.id).where(h.search_id == search_id, h.experiment_id == experiment_id)).scalar_one()
        return self._transact(work)

    def resolve_hypothesis(self, search_id: int, experiment_id: str, status: str, evidence: dict[str, Any]) -> bool:
        """Set a hypothesis's standing and its evidence (a later decision of its experiment replaces both). True when
        the search has a hypothesis for that experiment."""
        if status not in schema.HYPOTHESIS_STATUSES:
            raise LeaderboardError(f"hypothesis status {status!r}: expected one of {', '.join(schema.HYPOTHESIS_STATUSES)}")
        h = schema.hypotheses.c
        resolved = None if status == "pending" else schema.utcnow()
        return self._transact(lambda conn: conn.execute(sa.update(schema.hypotheses).where(
            h.search_id == search_id, h.experiment_id == experiment_id)
            .values(status=status, evidence=evidence, resolved_at=resolved)).rowcount > 0)

    def hypotheses(self, *, search_id: int | None = None, tier: str | None = None,
                   space: str | None = None) -> list[dict[str, Any]]:
        """Hypotheses, oldest first: a search's, or those of every search on a tier (and space), each with its
        experiment's tweaks and its search's name."""
        h, x, s = schema.hypotheses.c, schema.experiments.c, schema.searches.c
        stmt = (sa.select(schema.hypotheses, x.tweaks, x.patch.is_not(None).label("has_patch"), s.name.label("search"))
                .join(schema.experiments, x.id == h.experiment_id).join(schema.searches, s.id == h.search_id))
        if search_id is not None:
            stmt = stmt.where(h.search_id == search_id)
        if tier is not None:
            stmt = stmt.where(s.tier == tier)
        if space is not None:
            stmt = stmt.where(s.space == space)
        return self._select(stmt.order_by(h.created_at, h.id))

    def record_insights(self, tier: str, space: str, search_id: int | None, items: Iterable[dict[str, Any]]) -> list[int]:
        """A distillation: the new insights ({text, hypotheses: ids, agent: usage share}) become the active ones of the
        tier and space; the agent-written ones active before are superseded (a user's edits stay active). Their ids."""
        rows = []
        for item in items:
            text = item.get("text")
            if not isinstance(text, str) or not text.strip():
                raise LeaderboardError(f"insight text {text!r}: expected a non-empty string")
            rows.append({"text": text.strip(), "hypothesis_ids": sorted({int(i) for i in item.get("hypotheses") or ()}) or None,
                         "agent": item.get("agent")})
        i = schema.insights.c

        def work(conn: sa.Connection) -> list[int]:
            now = schema.utcnow()
            conn.execute(sa.update(schema.insights).where(i.tier == tier, i.space == space, i.status == "active",
                                                          i.author == "agent").values(status="superseded", updated_at=now))
            return [conn.execute(sa.insert(schema.insights).values(
                tier=tier, space=space, search_id=search_id, author="agent", status="active", created_at=now,
                updated_at=now, **row).returning(i.id)).scalar_one() for row in rows]
        return self._transact(work)

    def search_insights(self, search_id: int) -> list[dict[str, Any]]:
        """Every insight a search's distillations wrote, whatever became of it (their cost is the search's)."""
        i = schema.insights.c
        return self._select(sa.select(schema.insights).where(i.search_id == search_id).order_by(i.id))

    def insights(self, tier: str, space: str, *, status: str | None = "active") -> list[dict[str, Any]]:
        """The insights of a tier and search space, oldest first: the active ones, or those of `status` (None: all)."""
        i = schema.insights.c
        stmt = sa.select(schema.insights).where(i.tier == tier, i.space == space)
        if status is not None:
            stmt = stmt.where(i.status == status)
        return self._select(stmt.order_by(i.created_at, i.id))

    def edit_insight(self, insight_id: int, *, text: str | None = None, retire: bool = False) -> None:
        """A user's change to an insight: new text (it becomes theirs: later distillations keep it active), or
        retired (no search is shown it again)."""
        values: dict[str, Any] = {"updated_at": schema.utcnow()}
        if text is not None:
            if not text.strip():
                raise LeaderboardError("insight text '': expected a non-empty string (retire it instead)")
            values.update(text=text.strip(), author="user")
        if retire:
            values["status"] = "retired"
        i = schema.insights.c
        updated = self._transact(lambda conn: conn.execute(
            sa.update(schema.insights).where(i.id == insight_id).values(values)).rowcount)
        if not updated:
            raise LeaderboardError(f"insight {insight_id!r}: not in this database")

    def record_null_spread(self, scope: str, rung: str, kind: str, std: float, n: int,
                           baseline_experiment_id: str | None = None) -> None:
        """Set the null spread of a kind of change (the RMS of n paired null differences) at a rung in a scope (a
        search name or a tier); a later measurement replaces the earlier one."""
        if kind not in schema.CHANGE_KINDS:
            raise LeaderboardError(f"null spread kind {kind!r}: expected one of {', '.join(schema.CHANGE_KINDS)}")
        values = {"std": std, "n": n, "baseline_experiment_id": baseline_experiment_id, "updated_at": schema.utcnow()}
        stmt = self._insert(schema.null_spreads).values(scope=scope, rung=rung, kind=kind, **values)
        self._transact(lambda conn: conn.execute(
            stmt.on_conflict_do_update(index_elements=["scope", "rung", "kind"], set_=values)))

    def record_track(self, track: Track) -> None:
        """Create or update a leaderboard track (tracks are configuration: the latest definition wins)."""
        row = as_row(track)
        stmt = self._insert(schema.tracks).values(row)
        update = {k: v for k, v in row.items() if k != "name"}
        self._transact(lambda conn: conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=update)))

    def record_entry(self, entry: Entry) -> int:
        """Add a leaderboard entry to its (existing) track. Returns the entry id."""
        row = as_row(entry)
        row["created_at"] = row["created_at"] or schema.utcnow()
        return self._transact(lambda conn: conn.execute(
            sa.insert(schema.entries).values(row).returning(schema.entries.c.id)).scalar_one())

    def record_reference(self, entry: Entry) -> tuple[int, bool]:
        """Add a published reference entry (one with a `source`) to its (existing) track unless the track already
        has an entry with the same source and recipe. Returns (entry id, whether it was inserted now)."""
        if not entry.source:
            raise LeaderboardError(f"reference entry {entry.recipe!r} of track {entry.track!r}: expected a source "
                                   "(where the published number comes from)")
        row = as_row(entry)
        row["created_at"] = row["created_at"] or schema.utcnow()
        e = schema.entries.c

        def work(conn: sa.Connection) -> tuple[int, bool]:
            # Lock the track's row (PostgreSQL; SQLite's write transaction is already exclusive) so that two
            # processes touching the track at once cannot both insert the reference.
            conn.execute(sa.select(schema.tracks.c.name).where(schema.tracks.c.name == entry.track).with_for_update())
            found = conn.execute(sa.select(e.id).where(e.track == entry.track, e.source == entry.source,
                                                       e.recipe == entry.recipe).order_by(e.id)).first()
            if found is not None:
                return found.id, False
            return conn.execute(sa.insert(schema.entries).values(row).returning(e.id)).scalar_one(), True
        return self._transact(work)

    def withdraw_references(self, track: str, keep: set[tuple[str, str]]) -> int:
        """Delete the published reference entries of `track` (entries with a source and no experiment of ours) whose
        (recipe, source) is not in `keep`: the track's file is where published numbers come from, and one it no
        longer lists was wrong or replaced. Entries made by speedruns are never touched. Returns how many went."""
        e = schema.entries.c

        def work(conn: sa.Connection) -> int:
            rows = conn.execute(sa.select(e.id, e.recipe, e.source).where(
                e.track == track, e.source.is_not(None), e.experiment_id.is_(None))).all()
            stale = [r.id for r in rows if (r.recipe, r.source) not in keep]
            if stale:
                conn.execute(sa.delete(schema.entries).where(e.id.in_(stale)))
            return len(stale)
        return self._transact(work)

    # ---------------------------------------------------------------- queries

    def _read(self, work: Callable[[sa.Connection], T]) -> T:
        return self._transact(work, write=False)

    def _select(self, stmt: sa.Executable) -> list[dict[str, Any]]:
        return self._read(lambda conn: _rows(conn.execute(stmt)))

    def counts(self) -> dict[str, int]:
        """Rows per table (schema_info aside)."""
        tables = [t for t in schema.metadata.sorted_tables if t.name != "schema_info"]
        return self._read(lambda conn: {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                                        for t in tables})

    def tracks(self) -> list[dict[str, Any]]:
        return self._select(sa.select(schema.tracks).order_by(schema.tracks.c.name))

    def leaderboard(self, track: str) -> list[dict[str, Any]]:
        """The entries of `track`, fastest time-to-target first (entries without one last), each with a
        1-based `rank` (None when it has no time-to-target)."""
        e = schema.entries.c
        rows = self._select(sa.select(schema.entries).where(e.track == track)
                            .order_by(e.time_to_target_mean.asc().nulls_last(), e.created_at, e.id))
        for rank, row in enumerate(rows, start=1):
            row["rank"] = rank if row["time_to_target_mean"] is not None else None
        return rows

    def entries(self, track: str | None = None) -> list[dict[str, Any]]:
        """The leaderboard entries of `track` (else of every track), by id."""
        e = schema.entries.c
        stmt = sa.select(schema.entries)
        if track is not None:
            stmt = stmt.where(e.track == track)
        return self._select(stmt.order_by(e.id))

    def runs(self, *, experiment_id: str | Iterable[str] | None = None, search_id: int | None = None,
             rung: str | None = None, status: str | Iterable[str] | None = None, details: bool = False,
             columns: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Runs matching every filter given (`experiment_id` and `status`: one value or any of several), oldest
        first. `details` adds the bulky config and log_tail; `columns` names the only columns wanted instead."""
        r = schema.runs.c
        stmt = sa.select(*_pick(schema.runs, columns, schema.runs.c if details else _RUN_SUMMARY_COLUMNS))
        if experiment_id is not None:
            stmt = stmt.where(r.experiment_id.in_([experiment_id] if isinstance(experiment_id, str)
                                                  else sorted(set(experiment_id))))
        if search_id is not None:
            stmt = stmt.where(r.search_id == search_id)
        if rung is not None:
            stmt = stmt.where(r.rung == rung)
        if status is not None:
            stmt = stmt.where(r.status.in_([status] if isinstance(status, str) else list(status)))
        return self._select(stmt.order_by(r.id))

    def runs_by_id(self, run_ids: Iterable[int]) -> list[dict[str, Any]]:
        """The runs with these ids (summary columns, as `runs` gives them), by id; unknown ids are left out."""
        ids, r = sorted(set(run_ids)), schema.runs.c
        return self._read(lambda conn: [row for chunk in _chunks(ids) for row in _rows(conn.execute(
            sa.select(*_RUN_SUMMARY_COLUMNS).where(r.id.in_(chunk)).order_by(r.id)))])

    def run(self, run_id: int) -> dict[str, Any] | None:
        """One run with every column (config and log_tail included), or None when unknown."""
        rows = self._select(sa.select(schema.runs).where(schema.runs.c.id == run_id))
        return rows[0] if rows else None

    def device_seconds(self, search_id: int) -> dict[int, float]:
        """The compute of every run of a search, by run id: its job's wall time (finished_at - started_at: setup,
        compile and evaluations included, all of which a budget pays for) times its world size; 0 for a run not
        finished. The one definition of a search's compute: the search's progress line, its summary, its
        --budget-hours and the dashboard all add these up."""
        r = schema.runs.c
        stmt = sa.select(r.id, r.started_at, r.finished_at, r.world_size).where(r.search_id == search_id)
        rows = self._read(lambda conn: conn.execute(stmt).all())
        return {row.id: (row.finished_at - row.started_at).total_seconds() * (row.world_size or 1)
                if row.started_at and row.finished_at else 0.0 for row in rows}

    def metric_points(self, run_ids: Iterable[int]) -> list[dict[str, Any]]:
        """Metric points of the given runs, by run then step."""
        ids, m = sorted(set(run_ids)), schema.metric_points.c
        return self._read(lambda conn: [row for chunk in _chunks(ids) for row in _rows(conn.execute(
            sa.select(schema.metric_points).where(m.run_id.in_(chunk)).order_by(m.run_id, m.step)))])

    def experiment(self, experiment_id: str) -> dict[str, Any] | None:
        """An experiment with its `runs` (full rows) and `decisions`, or None when unknown."""
        def work(conn: sa.Connection) -> dict[str, Any] | None:
            found = _rows(conn.execute(sa.select(schema.experiments).where(schema.experiments.c.id == experiment_id)))
            if not found:
                return None
            result = found[0]
            result["runs"] = _rows(conn.execute(sa.select(schema.runs).where(schema.runs.c.experiment_id == experiment_id)
                                                .order_by(schema.runs.c.id)))
            result["decisions"] = _rows(conn.execute(
                sa.select(schema.decisions).where(schema.decisions.c.experiment_id == experiment_id)
                .order_by(schema.decisions.c.id)))
            return result
        return self._read(work)

    def experiments(self, *, search_id: int | None = None) -> list[dict[str, Any]]:
        """All experiments, oldest first; or those a search proposed, in the order it proposed them, each with
        `proposed_at` (an experiment another search made first keeps that search's created_at)."""
        x, p = schema.experiments, schema.proposals
        if search_id is None:
            return self._select(sa.select(x).order_by(x.c.created_at, x.c.id))
        stmt = (sa.select(x, p.c.created_at.label("proposed_at")).join(p, p.c.experiment_id == x.c.id)
                .where(p.c.search_id == search_id))
        return self._select(stmt.order_by(p.c.created_at, x.c.id))

    def experiments_by_id(self, experiment_ids: Iterable[str], *,
                          columns: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The experiments with these ids, by id (unknown ids are left out): every column but the patch, or the
        `columns` named."""
        ids, x = sorted(set(experiment_ids)), schema.experiments.c
        picked = _pick(schema.experiments, columns, _EXPERIMENT_SUMMARY_COLUMNS)
        return self._read(lambda conn: [row for chunk in _chunks(ids) for row in _rows(conn.execute(
            sa.select(*picked).where(x.id.in_(chunk)).order_by(x.id)))])

    def decisions(self, *, search_id: int | None = None, experiment_id: str | None = None,
                  columns: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Ladder decisions, oldest first, optionally of one search and/or one experiment; every column, or the
        `columns` named."""
        d = schema.decisions.c
        stmt = sa.select(*_pick(schema.decisions, columns, schema.decisions.c))
        if search_id is not None:
            stmt = stmt.where(d.search_id == search_id)
        if experiment_id is not None:
            stmt = stmt.where(d.experiment_id == experiment_id)
        return self._select(stmt.order_by(d.created_at, d.id))

    def optuna_trials(self, study_name: str) -> list[dict[str, Any]]:
        """The finished trials of an Optuna study kept in this database (a search's is `nanoresearch:NAME`), read
        from Optuna's own tables through this store's connection (read-only where the store is): each
        {number, value, params: {name: (internal value, distribution JSON)}}. [] when there is no such study.
        Optuna owns those tables; this reads the few columns its stored format has kept since v3."""
        def work(conn: sa.Connection) -> list[dict[str, Any]]:
            if not {"studies", "trials", "trial_params", "trial_values"} <= set(sa.inspect(conn).get_table_names()):
                return []
            rows = conn.execute(sa.text(
                "SELECT t.trial_id, t.number, v.value FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
                "WHERE s.study_name = :name AND t.state = 'COMPLETE' ORDER BY t.number"), {"name": study_name}).all()
            trials = {row.trial_id: {"number": row.number, "value": row.value, "params": {}} for row in rows}
            for chunk in _chunks(sorted(trials)):
                for p in conn.execute(sa.text(
                        "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
                        "WHERE trial_id IN :ids").bindparams(sa.bindparam("ids", expanding=True)), {"ids": chunk}):
                    trials[p.trial_id]["params"][p.param_name] = (p.param_value, p.distribution_json)
            return list(trials.values())
        return self._read(work)

    def rejected_proposals(self, search_id: int) -> list[dict[str, Any]]:
        """The proposals a search turned away, oldest first, each with its reason and payload."""
        r = schema.rejected_proposals.c
        return self._select(sa.select(schema.rejected_proposals).where(r.search_id == search_id)
                            .order_by(r.created_at, r.id))

    def null_spreads(self, scope: str) -> list[dict[str, Any]]:
        """The null spreads measured in a scope (a search name or a tier), one row per (rung, kind)."""
        n = schema.null_spreads.c
        return self._select(sa.select(schema.null_spreads).where(n.scope == scope).order_by(n.rung, n.kind))

    def null_spread(self, scope: str, rung: str, kind: str) -> dict[str, Any] | None:
        return next((r for r in self.null_spreads(scope) if r["rung"] == rung and r["kind"] == kind), None)

    def find_search(self, name: str) -> dict[str, Any] | None:
        rows = self._select(sa.select(schema.searches).where(schema.searches.c.name == name))
        return rows[0] if rows else None

    def search(self, search_id: int) -> dict[str, Any] | None:
        """The searches row with this id, or None when unknown."""
        rows = self._select(sa.select(schema.searches).where(schema.searches.c.id == search_id))
        return rows[0] if rows else None

    def proposal_count(self, search_id: int, *, excluding: Iterable[str] = ()) -> int:
        """How many experiments the search proposed, leaving out those `excluding` names (its baseline, which a
        search records with its proposals but nobody proposed)."""
        p = schema.proposals.c
        stmt = sa.select(sa.func.count()).select_from(schema.proposals).where(p.search_id == search_id)
        if excluding := list(excluding):
            stmt = stmt.where(p.experiment_id.not_in(excluding))
        return self._read(lambda conn: conn.execute(stmt).scalar_one())

    def searches(self) -> list[dict[str, Any]]:
        """Every search, newest first, with n_proposed, n_runs, n_finished and training_hours."""
        s, r, p = schema.searches, schema.runs.c, schema.proposals.c
        n_proposed = (sa.select(sa.func.count()).where(p.search_id == s.c.id).scalar_subquery())
        stmt = (sa.select(s, n_proposed.label("n_proposed"),
                          sa.func.count(r.id).label("n_runs"),
                          sa.func.count(r.finished_at).label("n_finished"),
                          (sa.func.coalesce(sa.func.sum(r.total_training_time), 0.0) / 3600.0).label("training_hours"))
                .select_from(s.outerjoin(schema.runs, r.search_id == s.c.id))
                .group_by(s.c.id).order_by(s.c.started_at.desc(), s.c.id.desc()))
        return self._select(stmt)

    def finished_keys(self, search_id: int | None = None) -> set[tuple[str, str, int]]:
        """(experiment_id, rung, seed) of every finished run (of one search, when given): what a resumed
        search must not run again."""
        r = schema.runs.c
        stmt = sa.select(r.experiment_id, r.rung, r.seed).where(r.status != "running")
        if search_id is not None:
            stmt = stmt.where(r.search_id == search_id)
        return set(self._read(lambda conn: [tuple(row) for row in conn.execute(stmt)]))
