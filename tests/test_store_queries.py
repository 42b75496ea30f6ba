"""Store additions made for the dashboard: `Store.run(run_id)` and read-only stores (`read_only=True`).

Same databases as tests/test_store.py (its `db_url` fixture: SQLite, and PostgreSQL when available).
"""
# ruff: noqa: F811  (tests take the imported `db_url` fixture as an argument, which ruff reads as a redefinition)

import hashlib
import os
import sqlite3
import subprocess

import pytest
import sqlalchemy as sa

from leaderboard import Experiment, LeaderboardError, Run, SchemaError, Store
from leaderboard.store import resolve_url
from tests.test_store import T0, V1_DDL, curve, db_url, experiment, finished_run  # noqa: F401


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(resolve_url(url))
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _empty_database(db_url: str) -> None:
    """An existing database without our tables: an empty SQLite file (the PostgreSQL schema already is)."""
    url = resolve_url(db_url)
    if url.get_backend_name() == "sqlite":
        sqlite3.connect(url.database).close()


def test_run_returns_the_full_row_or_none(db_url):
    with Store(db_url) as store:
        recorded = store.record_run(finished_run("exp0001", config={"model": {"depth": 2}}, log_tail="step 10 ok"),
                                    curve(), experiment=experiment(1))
        run = store.run(recorded.run_id)
        assert (run["id"], run["experiment_id"], run["rung"], run["seed"]) == (recorded.run_id, "exp0001", "d2", 0)
        assert run["config"] == {"model": {"depth": 2}} and run["log_tail"] == "step 10 ok"
        assert store.run(recorded.run_id + 1000) is None


def test_device_seconds_are_wall_time_times_world_size(db_url):
    with Store(db_url) as store:
        search_id = store.start_search("s")
        # finished_run: started at T0, finished two minutes later; training time is only part of that.
        a = store.record_run(finished_run("exp0001", search_id=search_id, total_training_time=60.0, world_size=8),
                             experiment=experiment(1)).run_id
        b = store.record_run(finished_run("exp0001", seed=1, search_id=search_id, total_training_time=30.0,
                                          world_size=None)).run_id  # no world size recorded: one device
        c = store.record_run(finished_run("exp0001", seed=2, search_id=search_id, status="failed",
                                          total_training_time=None)).run_id  # a failed run cost its time too
        d = store.record_run(Run(experiment_id="exp0001", rung="d2", seed=4, status="running", search_id=search_id,
                                 started_at=T0)).run_id  # not finished: nothing counted yet
        store.record_run(finished_run("exp0001", seed=3, total_training_time=99.0))  # in no search
        assert store.device_seconds(search_id) == {a: 8 * 120.0, b: 120.0, c: 120.0, d: 0.0}
        assert store.device_seconds(search_id + 1) == {}


def test_read_only_store_reads_everything_and_writes_nothing(db_url):
    with Store(db_url) as writer:
        recorded = writer.record_run(finished_run("exp0001"), curve(), experiment=experiment(1))
        counts = writer.counts()
    with Store(db_url, read_only=True) as reader:
        assert reader.read_only and reader.schema_version == writer.schema_version
        assert [r["id"] for r in reader.runs()] == [recorded.run_id]
        assert len(reader.metric_points([recorded.run_id])) == len(curve())
        assert reader.run(recorded.run_id)["val_bpb"] == 1.8
        with pytest.raises(LeaderboardError, match="open read-only: cannot write"):
            reader.record_experiment(Experiment(id="new", name="new"))
        # Below the store's own guard, the database connection itself refuses writes.
        with pytest.raises(LeaderboardError, match="(?i)read-?only"):
            reader._read(lambda conn: conn.exec_driver_sql("DELETE FROM metric_points"))
    with Store(db_url) as again:
        assert again.counts() == counts


def test_read_only_store_sees_what_a_writer_records_later(db_url):
    with Store(db_url) as writer, Store(db_url, read_only=True) as reader:
        assert reader.runs() == []
        writer.record_run(finished_run("exp0001"), experiment=experiment(1))
        assert [r["experiment_id"] for r in reader.runs()] == ["exp0001"]


def test_read_only_store_never_creates_a_sqlite_file(tmp_path):
    path = tmp_path / "missing.db"
    with pytest.raises(LeaderboardError, match=f"SQLite database {path} does not exist"):
        Store(f"sqlite:///{path}", read_only=True)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(LeaderboardError, match="is a directory"):
        Store(f"sqlite:///{tmp_path}", read_only=True)
    with pytest.raises(LeaderboardError, match="needs a database file"):
        Store("sqlite://", read_only=True)
    # A URI of the caller's own asking to create the file (mode=rwc) is opened read-only all the same.
    with pytest.raises(LeaderboardError):
        Store(f"sqlite:///file:{path}?mode=rwc&uri=true", read_only=True)
    assert not path.exists()


def _files_and_digest(directory) -> tuple[list[str], str]:
    names = sorted(p.name for p in directory.iterdir())
    return names, hashlib.sha256((directory / "lb.db").read_bytes()).hexdigest()


def test_read_only_sqlite_store_leaves_no_side_files_and_the_file_unchanged(tmp_path):
    """A WAL database's reader needs -wal and -shm files; the dashboard's store must not leave them behind
    (mode=ro makes them and cannot remove them), and it changes no byte of the database."""
    url = f"sqlite:///{tmp_path / 'lb.db'}"
    with Store(url) as writer:
        writer.record_run(finished_run("exp0001"), curve(), experiment=experiment(1))
    before = _files_and_digest(tmp_path)
    assert before[0] == ["lb.db"]
    with Store(url, read_only=True) as reader:
        assert [r["experiment_id"] for r in reader.runs()] == ["exp0001"]
        assert _files_and_digest(tmp_path) == before  # between reads too: the dashboard may run for days
        with pytest.raises(LeaderboardError, match="(?i)read-?only"):
            reader._read(lambda conn: conn.exec_driver_sql("DELETE FROM metric_points"))
    assert _files_and_digest(tmp_path) == before

    # While a writer is open, its side files stay (they are the writer's) and both carry on.
    with Store(url) as writer, Store(url, read_only=True) as reader:
        writer.record_run(finished_run("exp0001", seed=1), experiment=experiment(1))
        assert (tmp_path / "lb.db-wal").exists()
        assert sorted(r["seed"] for r in reader.runs()) == [0, 1]
        assert (tmp_path / "lb.db-wal").exists()
        writer.record_run(finished_run("exp0001", seed=2), experiment=experiment(1))
        assert sorted(r["seed"] for r in reader.runs()) == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lb.db"]


def test_read_only_store_reads_a_wal_database_on_a_read_only_file_system(tmp_path):
    """A results database on read-only media (its side files cannot be made there) opens and reads."""
    mount = tmp_path / "media"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        url = f"sqlite:///{mount / 'lb.db'}"
        with Store(url) as writer:
            writer.record_run(finished_run("exp0001"), curve(), experiment=experiment(1))
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        with Store(url, read_only=True) as reader:
            assert [r["experiment_id"] for r in reader.runs()] == ["exp0001"]
            assert len(reader.metric_points([reader.runs()[0]["id"]])) == len(curve())
        assert sorted(p.name for p in mount.iterdir()) == ["lb.db"]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_read_only_store_leaves_a_database_without_tables_empty(db_url):
    _empty_database(db_url)
    with Store(db_url, read_only=True) as reader:
        assert reader.schema_version == 0
    assert _tables(db_url) == set()


def test_read_only_store_refuses_an_older_schema_without_upgrading_it(db_url):
    url = resolve_url(db_url)
    pg = url.get_backend_name() == "postgresql"
    ddl = V1_DDL.format(json="JSONB" if pg else "JSON", ts="TIMESTAMP WITH TIME ZONE" if pg else "DATETIME",
                        serial="SERIAL" if pg else "INTEGER", real="DOUBLE PRECISION",
                        t0="2026-01-02 03:04:05+00" if pg else "2026-01-02 03:04:05.000000")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in ddl.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
    engine.dispose()
    with pytest.raises(SchemaError, match="schema version 1, older than .* open read-only"):
        Store(db_url, read_only=True)
    assert "searches" not in _tables(db_url)  # not upgraded


def test_progress_fills_a_running_row_until_its_final_record_replaces_it(db_url):
    with Store(db_url) as store:
        store.record_run(Run(experiment_id="exp0001", rung="d2", seed=0, status="running", started_at=T0),
                         experiment=experiment(1))
        store.record_run(finished_run("exp0001", seed=1, val_bpb=1.8))
        assert store.record_progress("exp0001", "d2", 0, steps=120, tok_per_s=1700.0, val_bpb=2.41)
        running = store.runs(experiment_id="exp0001", status="running")[0]
        assert (running["steps"], running["tok_per_s"], running["val_bpb"]) == (120, 1700.0, 2.41)
        # A finished run is never touched, nor a run not recorded at all.
        assert not store.record_progress("exp0001", "d2", 1, steps=1, tok_per_s=1.0, val_bpb=9.0)
        assert not store.record_progress("exp0001", "d2", 7, steps=1, tok_per_s=1.0, val_bpb=9.0)
        assert store.runs(experiment_id="exp0001", status="ok")[0]["val_bpb"] == 1.8
        # It crashed: the final record has no val_bpb, and the row must not keep the one it showed while running.
        store.record_run(Run(experiment_id="exp0001", rung="d2", seed=0, status="crash", finished_at=T0,
                             reason="boom"))
        crashed = store.runs(experiment_id="exp0001", status="crash")[0]
        assert (crashed["steps"], crashed["tok_per_s"], crashed["val_bpb"]) == (None, None, None)
        assert crashed["started_at"] == T0  # what the final record leaves empty otherwise keeps the running row's
