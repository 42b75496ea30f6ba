"""Noise per kind of change and power in the store (schema v4): decisions carry their kind, spread, MDE and compute
multiplier, runs their throughput and loaded flag, null spreads are kept per (rung, kind); a v3 database upgrades in
place with its noise floors kept as structural null spreads.

Same databases as tests/test_store.py (its `db_url` fixture: SQLite, and PostgreSQL when available).
"""
# ruff: noqa: F811  (tests take the imported `db_url` fixture as an argument, which ruff reads as a redefinition)

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from leaderboard import Decision, LeaderboardError, Run, Store
from leaderboard import schema as lb_schema
from leaderboard.schema import SCHEMA_VERSION
from leaderboard.store import resolve_url
from tests.test_store import db_url  # noqa: F401

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
# What v4 added to tables that existed in v3.
V4_COLUMNS = [("decisions", c) for c in ("kind", "spread", "df", "mde", "compute_multiplier", "multiplier_extrapolated")] + \
             [("runs", "tok_per_s"), ("runs", "loaded")]


def write_v3_schema(conn: sa.Connection) -> None:
    """The v3 tables as v3 had them: today's, without v4's columns, with noise_floors instead of null_spreads."""
    tables = [t for t in lb_schema.metadata.sorted_tables if t.name != "null_spreads"]
    lb_schema.metadata.create_all(conn, tables=tables)
    for table, column in V4_COLUMNS:
        conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    ts = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
    conn.exec_driver_sql(f"CREATE TABLE noise_floors (scope TEXT NOT NULL, rung VARCHAR(64) NOT NULL, "
                         f"std DOUBLE PRECISION NOT NULL, n INTEGER NOT NULL, baseline_experiment_id VARCHAR(64) "
                         f"REFERENCES experiments (id), updated_at {ts} NOT NULL, PRIMARY KEY (scope, rung))")


def test_v3_database_is_upgraded_to_v4_with_noise_floors_kept_as_structural(db_url):
    engine = sa.create_engine(resolve_url(db_url))
    with engine.begin() as conn:
        write_v3_schema(conn)
        conn.execute(sa.insert(lb_schema.schema_info).values(key="version", value="3"))
        conn.execute(sa.insert(lb_schema.searches).values(id=1, name="old", tier="cpu", status="finished", started_at=T0))
        conn.execute(sa.insert(lb_schema.experiments).values(id="base01", name="baseline", tweaks={}, proposer="baseline",
                                                             created_at=T0))
        conn.exec_driver_sql("INSERT INTO runs (experiment_id, rung, seed, status, val_bpb, search_id) "
                             "VALUES ('base01', 'd2', 0, 'ok', 2.6, 1)")
        conn.exec_driver_sql("INSERT INTO decisions (experiment_id, from_rung, verdict, search_id, mean_delta, noise_floor, "
                             "created_at) VALUES ('base01', 'd2', 'reject', 1, 0.01, 0.021, '2026-01-02 03:04:05+00')")
        conn.exec_driver_sql("INSERT INTO noise_floors VALUES ('cpu-all', 'd2', 0.021, 3, 'base01', '2026-01-02 03:04:05+00')")
    engine.dispose()

    with Store(db_url) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert "noise_floors" not in store.counts()
        [spread] = store.null_spreads("cpu-all")
        assert (spread["rung"], spread["kind"], spread["std"], spread["n"]) == ("d2", "structural", 0.021, 3)
        [old] = store.decisions(search_id=1)
        assert (old["mean_delta"], old["noise_floor"], old["kind"], old["mde"]) == (0.01, 0.021, None, None)
        [run] = store.runs(search_id=1)
        assert run["val_bpb"] == 2.6 and run["tok_per_s"] is None and run["loaded"] is None
        # What v4 adds works on the upgraded database, beside the old rows.
        store.record_decision(Decision(experiment_id="base01", from_rung="d2", verdict="promote", search_id=1, kind="parametric",
                                       spread=0.0004, df=7.5, mde=0.0012, compute_multiplier=1.31,
                                       multiplier_extrapolated=True))
        store.record_run(Run(experiment_id="base01", rung="d2", seed=1, status="ok", val_bpb=2.7, tok_per_s=3900.5,
                             loaded=False, search_id=1, finished_at=T0))
        store.record_null_spread("cpu-all", "d2", "parametric", 0.0004, 3)
        new = store.decisions(search_id=1)[-1]
        assert (new["kind"], new["mde"], new["df"], new["compute_multiplier"], new["multiplier_extrapolated"]) == \
            ("parametric", 0.0012, 7.5, 1.31, True)
        assert [(r["seed"], r["tok_per_s"], r["loaded"]) for r in store.runs(search_id=1)] == [(0, None, None), (1, 3900.5, False)]
        upgraded = store.counts()
    with Store(db_url) as again:  # reopening an up-to-date database changes nothing
        assert again.counts() == upgraded and again.schema_version == SCHEMA_VERSION


@pytest.mark.parametrize("build,expected", [
    (lambda: Decision(experiment_id="e", from_rung="d2", verdict="reject", kind="random"), "decision kind 'random'"),
    (lambda: Run(experiment_id="e", rung="d2", seed=0, status="ok", tok_per_s="fast"), "tok_per_s 'fast'"),
    (lambda: Run(experiment_id="e", rung="d2", seed=0, status="ok", loaded="yes"), "loaded 'yes'"),
])
def test_bad_values_name_themselves(build, expected):
    with pytest.raises(LeaderboardError) as info:
        build()
    assert expected in str(info.value) and "\n" not in str(info.value)
