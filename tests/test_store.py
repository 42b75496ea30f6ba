"""The leaderboard store, on SQLite and on a real PostgreSQL (the same tests, via the `db_url` fixture).

PostgreSQL: set NANORESEARCH_TEST_PG_URL (`source scripts/ci_postgres.sh` starts a throwaway server).
Without it the PostgreSQL variants skip, unless NANORESEARCH_REQUIRE_PG=1 (CI), where they fail.
Each test gets a fresh database: a new SQLite file, or a new PostgreSQL schema (search_path in the URL).
"""

import multiprocessing
import os
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from leaderboard import Decision, Entry, Experiment, LeaderboardError, Run, SchemaError, Store, Track
from leaderboard.schema import NOISE_FLOOR_PROPOSER, SCHEMA_VERSION
from leaderboard.store import resolve_url
from leaderboard.views import search_summary

PG_URL = os.environ.get("NANORESEARCH_TEST_PG_URL")
REQUIRE_PG = os.environ.get("NANORESEARCH_REQUIRE_PG") == "1"


@contextmanager
def pg_schema(base_url: str):
    """A fresh, empty schema on the test server, and a URL whose connections use it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(resolve_url(base_url), connect_args={"connect_timeout": 5})
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {name}")
    url = resolve_url(base_url).update_query_dict({"options": f"-csearch_path={name}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {name} CASCADE")
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'leaderboard.db'}"
        return
    if not PG_URL:
        if REQUIRE_PG:
            pytest.fail("NANORESEARCH_REQUIRE_PG=1 but NANORESEARCH_TEST_PG_URL is not set (source scripts/ci_postgres.sh)")
        pytest.skip("no PostgreSQL: set NANORESEARCH_TEST_PG_URL (source scripts/ci_postgres.sh)")
    with pg_schema(PG_URL) as url:
        yield url


@pytest.fixture
def store(db_url):
    with Store(db_url) as s:
        yield s


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def experiment(i: int, **kw) -> Experiment:
    return Experiment(id=f"exp{i:04d}", name=f"experiment {i}", tweaks={"smear": bool(i % 2)}, **kw)


def finished_run(exp_id: str, rung: str = "d2", seed: int = 0, **kw) -> Run:
    fields = dict(status="ok", depth=int(rung[1:]), val_bpb=1.8, total_training_time=60.0, tokens=1_000_000,
                  started_at=T0, finished_at=T0 + timedelta(minutes=2), config={"depth": int(rung[1:]), "seed": seed})
    return Run(experiment_id=exp_id, rung=rung, seed=seed, **(fields | kw))


def curve(n: int = 4, scale: float = 1.0) -> list[dict]:
    return [{"step": 10 * i, "tokens": 2560 * i, "elapsed_train_s": 1.5 * i, "train_loss": 5.0 * scale - 0.3 * i,
             "val_bpb": 2.0 * scale - 0.05 * i, "tok_per_s": 1700.0, "mfu": 0.01} for i in range(n)]


def count(store: Store, table: str) -> int:
    return store.counts()[table]


# ---------------------------------------------------------------- opening, URLs, schema versions

def test_fresh_database_gets_current_schema(store):
    assert store.schema_version == SCHEMA_VERSION
    assert set(store.counts()) >= {"experiments", "runs", "metric_points", "decisions", "searches", "tracks",
                                   "entries", "null_spreads", "proposals"}
    assert all(n == 0 for n in store.counts().values())


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path):
    path = tmp_path / "lb.db"
    store = Store(f"sqlite:///{path}")
    # Every pooled connection is configured, not only the first: check two at once.
    with store._engine.connect() as a, store._engine.connect() as b:
        for conn in (a, b):
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    store.close()


def test_default_url_is_env_then_sqlite_file_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NANORESEARCH_DB", raising=False)
    Store().close()
    assert (tmp_path / "nanoresearch.db").exists()
    monkeypatch.setenv("NANORESEARCH_DB", f"sqlite:///{tmp_path / 'from_env.db'}")
    Store().close()
    assert (tmp_path / "from_env.db").exists()


@pytest.mark.parametrize("url, expected", [
    ("not a url", "'not a url'"),
    ("mysql://u@h/db", "unsupported backend 'mysql'"),
    ("postgresql+psycopg://u@h/db", "driver is not installed"),
    ("postgresql://nobody@127.0.0.1:1/x", "127.0.0.1"),  # nothing listens on port 1
])
def test_bad_urls_and_unreachable_server_give_one_line_errors(url, expected):
    with pytest.raises(LeaderboardError) as info:
        Store(url, connect_timeout=2)
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_unusable_sqlite_paths_give_one_line_errors(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    cases = {f"sqlite:///{tmp_path / 'missing' / 'lb.db'}": "does not exist",
             f"sqlite:///{a_file / 'lb.db'}": "is not a directory",
             f"sqlite:///{tmp_path}": "is a directory"}
    # A directory that cannot be written: permissions stop anyone but root; /proc stops root too.
    if os.geteuid() == 0:
        cases["sqlite:////proc/nanoresearch-test.db"] = "/proc/nanoresearch-test.db"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases[f"sqlite:///{locked / 'lb.db'}"] = "not writable"
    for url, expected in cases.items():
        with pytest.raises(LeaderboardError) as info:
            Store(url)
        assert expected in str(info.value) and "\n" not in str(info.value), url


def test_newer_schema_is_refused_and_left_untouched(db_url):
    Store(db_url).close()
    engine = sa.create_engine(resolve_url(db_url))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE schema_info SET value = '{SCHEMA_VERSION + 5}' WHERE key = 'version'")
    with pytest.raises(SchemaError) as info:
        Store(db_url)
    assert f"{SCHEMA_VERSION + 5}" in str(info.value) and f"({SCHEMA_VERSION})" in str(info.value)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT value FROM schema_info").scalar() == str(SCHEMA_VERSION + 5)
    engine.dispose()


# The v1 schema as v1 wrote it (before searches, decisions, noise floors, runs.search_id, experiments.extra).
V1_DDL = """
CREATE TABLE schema_info (key VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE experiments (id VARCHAR(64) PRIMARY KEY, name TEXT NOT NULL, parent_id VARCHAR(64), tweaks {json},
    rationale TEXT, proposer VARCHAR(64) NOT NULL, code_version TEXT, patch TEXT, created_at {ts} NOT NULL);
CREATE TABLE runs (id {serial} PRIMARY KEY, experiment_id VARCHAR(64) NOT NULL REFERENCES experiments (id),
    rung VARCHAR(64) NOT NULL, depth INTEGER, seed INTEGER NOT NULL, status VARCHAR(16) NOT NULL,
    failure_class VARCHAR(64), reason TEXT, hardware TEXT, world_size INTEGER, started_at {ts}, finished_at {ts},
    config {json}, run_dir TEXT, val_bpb {real}, core {real}, total_training_time {real}, time_to_target {real},
    tokens BIGINT, flops {real}, peak_memory_bytes BIGINT, steps INTEGER, cost {real}, log_tail TEXT,
    CONSTRAINT uq_runs_key UNIQUE (experiment_id, rung, seed));
CREATE TABLE metric_points (run_id INTEGER NOT NULL REFERENCES runs (id), step INTEGER NOT NULL, tokens BIGINT,
    elapsed_train_s {real}, train_loss {real}, val_bpb {real}, core {real}, tok_per_s {real}, mfu {real},
    PRIMARY KEY (run_id, step));
CREATE TABLE tracks (name VARCHAR(128) PRIMARY KEY, description TEXT, metric VARCHAR(64) NOT NULL, target {real},
    depth INTEGER, hardware TEXT, timing_rule TEXT, config {json});
CREATE TABLE entries (id {serial} PRIMARY KEY, track VARCHAR(128) NOT NULL REFERENCES tracks (name),
    experiment_id VARCHAR(64) REFERENCES experiments (id), recipe TEXT NOT NULL, seeds INTEGER,
    time_to_target_mean {real}, time_to_target_std {real}, metric_mean {real}, metric_std {real}, val_bpb {real},
    p_value {real}, is_record BOOLEAN NOT NULL, code_version TEXT, command TEXT, source TEXT, run_ids {json},
    created_at {ts} NOT NULL);
INSERT INTO schema_info VALUES ('version', '1');
INSERT INTO experiments VALUES ('base01', 'baseline', NULL, '{{}}', NULL, 'manual', 'abc123', NULL, '{t0}');
INSERT INTO runs (experiment_id, rung, depth, seed, status, started_at, finished_at, config, val_bpb, tokens)
    VALUES ('base01', 'd2', 2, 0, 'ok', '{t0}', '{t0}', '{{"depth": 2}}', 1.75, 123456);
INSERT INTO metric_points VALUES (1, 0, 0, 0.0, 5.5, 2.5, NULL, 100.0, 0.01);
INSERT INTO metric_points VALUES (1, 100, 25600, 9.0, 3.0, 1.75, NULL, 100.0, 0.01);
INSERT INTO tracks VALUES ('cpu-d2', 'tiny', 'val_bpb', 1.8, 2, 'cpu', 'training time only', NULL);
INSERT INTO entries (track, experiment_id, recipe, seeds, time_to_target_mean, is_record, created_at)
    VALUES ('cpu-d2', 'base01', 'baseline', 3, 42.0, TRUE, '{t0}');
"""


def test_v1_database_is_upgraded_in_place_with_data_kept(db_url):
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

    with Store(db_url) as store:
        assert store.schema_version == SCHEMA_VERSION
        old = store.experiment("base01")
        assert old["extra"] is None and old["created_at"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        [run] = old["runs"]
        assert (run["val_bpb"], run["tokens"], run["config"], run["search_id"]) == (1.75, 123456, {"depth": 2}, None)
        assert [p["val_bpb"] for p in store.metric_points([run["id"]])] == [2.5, 1.75]
        assert store.leaderboard("cpu-d2")[0]["time_to_target_mean"] == 42.0
        # What v2 added works on the upgraded database, alongside the old rows.
        search_id = store.start_search("after-upgrade", tier="cpu")
        store.record_run(finished_run("exp0001", seed=0, search_id=search_id), curve(),
                         experiment=experiment(1, extra={"falsify": "val_bpb not lower"}))
        store.record_decision(Decision(experiment_id="exp0001", from_rung="d2", verdict="reject",
                                       baseline_experiment_id="base01", search_id=search_id))
        assert store.experiment("exp0001")["extra"] == {"falsify": "val_bpb not lower"}
        assert [r["experiment_id"] for r in store.runs(search_id=search_id)] == ["exp0001"]
        store.finish_search(search_id, "finished", summary="search 'after-upgrade' finished: 1 proposals")
        store.finish_search(search_id, "finished")  # ended again without one: the summary stays (v9)
        assert store.search(search_id)["summary"] == "search 'after-upgrade' finished: 1 proposals"
        # v10: the hypothesis ledger and insights.
        hypothesis = store.record_hypothesis(search_id, "exp0001", "it lowers val_bpb", "d >= 0")
        assert store.resolve_hypothesis(search_id, "exp0001", "refuted", {"rung": "d2", "mean_delta": 0.01})
        assert store.record_insights("cpu", "all", search_id, [{"text": "keep it off", "hypotheses": [hypothesis]}])
        assert [h["status"] for h in store.hypotheses(search_id=search_id)] == ["refuted"]
        assert [i["hypothesis_ids"] for i in store.insights("cpu", "all")] == [[hypothesis]]
        assert count(store, "runs") == 2
        upgraded = store.counts()
    with Store(db_url) as again:  # reopening an up-to-date database changes nothing
        assert again.counts() == upgraded and again.schema_version == SCHEMA_VERSION


def test_hypotheses_keep_their_first_statement_and_bad_values_are_one_line_errors(db_url):
    with Store(db_url) as store:
        search_id = store.start_search("ledger", tier="cpu", space="all")
        store.record_experiment(experiment(1), search_id=search_id)
        first = store.record_hypothesis(search_id, "exp0001", "  smear helps  ", "")
        assert store.record_hypothesis(search_id, "exp0001", "said again on resume") == first
        [h] = store.hypotheses(search_id=search_id)
        assert (h["statement"], h["falsification"], h["status"], h["search"]) == ("smear helps", None, "pending", "ledger")
        with pytest.raises(LeaderboardError, match="hypothesis status 'maybe': expected one of supported, refuted, failed"):
            store.resolve_hypothesis(search_id, "exp0001", "maybe", {})
        with pytest.raises(LeaderboardError, match="hypothesis statement '  '"):
            store.record_hypothesis(search_id, "exp0001", "  ")
        assert not store.resolve_hypothesis(search_id, "nope", "refuted", {})  # no such hypothesis: nothing changes
        assert store.hypotheses(tier="gpu") == [] and len(store.hypotheses(tier="cpu", space="all")) == 1
        [i] = store.record_insights("cpu", "all", search_id, [{"text": "one", "hypotheses": [first]}])
        with pytest.raises(LeaderboardError, match="insight 999: not in this database"):
            store.edit_insight(999, retire=True)
        with pytest.raises(LeaderboardError, match="insight text ''"):
            store.edit_insight(i, text=" ")
        assert store.insights("cpu", "all")[0]["text"] == "one"


# ---------------------------------------------------------------- recording runs

def test_recording_a_finished_run_twice_is_a_no_op(store):
    first = store.record_run(finished_run("exp0001"), curve(), experiment=experiment(1))
    again = store.record_run(finished_run("exp0001", val_bpb=9.9), curve(6), experiment=experiment(1))
    assert first.action == "inserted" and again == (first.run_id, "unchanged")
    assert count(store, "runs") == 1 and count(store, "metric_points") == 4 and count(store, "experiments") == 1
    assert store.runs()[0]["val_bpb"] == 1.8


def test_running_run_is_completed_with_results_and_points(store):
    store.record_experiment(experiment(1))
    started = store.record_run(Run(experiment_id="exp0001", rung="d2", seed=3, status="running", started_at=T0,
                                   hardware="cpu: 2 cores", world_size=1))
    assert store.finished_keys() == set()
    assert store.record_run(Run(experiment_id="exp0001", rung="d2", seed=3, status="running")).action == "unchanged"
    done = store.record_run(finished_run("exp0001", seed=3, started_at=None, val_bpb=1.7), curve(5))
    assert done == (started.run_id, "completed")
    [row] = store.runs(details=True)
    assert (row["status"], row["val_bpb"], row["hardware"], row["started_at"]) == ("ok", 1.7, "cpu: 2 cores", T0)
    assert len(store.metric_points([started.run_id])) == 5
    assert store.finished_keys() == {("exp0001", "d2", 3)}
    assert store.record_run(finished_run("exp0001", seed=3, val_bpb=0.1)).action == "unchanged"


def test_completion_is_atomic(store, monkeypatch):
    store.record_experiment(experiment(1))
    started = store.record_run(Run(experiment_id="exp0001", rung="d2", seed=0, status="running"))

    def crash(*args, **kwargs):
        raise RuntimeError("worker killed while writing points")
    monkeypatch.setattr(store, "_insert_points", crash)
    with pytest.raises(RuntimeError):
        store.record_run(finished_run("exp0001"), curve())
    [row] = store.runs()
    assert row["status"] == "running" and row["val_bpb"] is None
    assert store.metric_points([started.run_id]) == []

    monkeypatch.undo()
    assert store.record_run(finished_run("exp0001"), curve()).action == "completed"
    assert len(store.metric_points([started.run_id])) == 4


def test_metric_points_are_unique_per_step(store):
    store.record_experiment(experiment(1))
    run_id = store.record_run(Run(experiment_id="exp0001", rung="d2", seed=0, status="running")).run_id
    store.add_metric_points(run_id, curve(3))
    store.add_metric_points(run_id, curve(5, scale=2.0))  # steps 0..20 again (kept as first written), 30, 40 new
    points = store.metric_points([run_id])
    assert [p["step"] for p in points] == [0, 10, 20, 30, 40]
    assert points[0]["val_bpb"] == curve(1)[0]["val_bpb"]


def test_non_finite_numbers_are_stored_as_null(store):
    points = curve(2)
    points[1]["train_loss"] = float("nan")
    points[1]["val_bpb"] = float("inf")
    run = finished_run("exp0001", status="diverged", val_bpb=float("nan"), config={"lr": float("nan"), "depth": 2})
    run_id = store.record_run(run, points, experiment=experiment(1)).run_id
    [row] = store.runs(details=True)
    assert row["val_bpb"] is None and row["config"] == {"lr": None, "depth": 2}
    assert [(p["train_loss"], p["val_bpb"]) for p in store.metric_points([run_id])][1] == (None, None)


def test_timestamps_round_trip_as_utc(store):
    local = timezone(timedelta(hours=-5))
    start = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=local)
    store.record_run(finished_run("exp0001", started_at=start), experiment=experiment(1))
    got = store.runs()[0]["started_at"]
    assert got == start and got.tzinfo is not None and got.utcoffset() == timedelta(0)


def test_run_of_unknown_experiment_is_a_one_line_error(store):
    # Also proves SQLite enforces foreign keys (it does not unless told to).
    with pytest.raises(LeaderboardError) as info:
        store.record_run(finished_run("nope"))
    assert "foreign key" in str(info.value).lower() and "\n" not in str(info.value)
    assert count(store, "runs") == 0


@pytest.mark.parametrize("build, expected", [
    (lambda: Run(experiment_id="e", rung="d2", seed=0, status="exploded"), "'exploded'"),
    (lambda: Run(experiment_id="e", rung="d2", seed="0", status="ok"), "seed '0'"),
    (lambda: Run(experiment_id="e", rung="d2", seed=0, status="ok", val_bpb="1.8"), "val_bpb '1.8'"),
    (lambda: Decision(experiment_id="e", from_rung="d2", verdict="maybe"), "'maybe'"),
    (lambda: Experiment(id="", name="x"), "experiment id ''"),
])
def test_bad_records_name_the_bad_value(build, expected):
    with pytest.raises(LeaderboardError) as info:
        build()
    assert expected in str(info.value)


def test_bad_metric_point_is_refused_before_writing(store):
    store.record_experiment(experiment(1))
    with pytest.raises(LeaderboardError) as info:
        store.record_run(finished_run("exp0001"), [{"step": 0}, {"step": 1.5, "val_bpb": 2.0}])
    assert "metric point 1" in str(info.value) and "step 1.5" in str(info.value)
    assert count(store, "runs") == 0


# ---------------------------------------------------------------- queries the dashboard and harness make

def build_search(store: Store) -> tuple[int, dict]:
    """A small search: baseline + 3 proposals (one never ran), rungs d2 -> d4, one promoted."""
    search_id = store.start_search("s1", tier="cpu", space="tiny", proposer="optuna", config={"rungs": ["d2", "d4"]})
    for i in range(4):
        store.record_experiment(experiment(i), search_id=search_id)
    val = {("exp0000", "d2"): [1.80, 1.82], ("exp0001", "d2"): [1.70, 1.72], ("exp0002", "d2"): [1.90, None],
           ("exp0000", "d4"): [1.50, 1.52], ("exp0001", "d4"): [1.45]}
    minute = 0
    for (exp_id, rung), values in val.items():
        for seed, v in enumerate(values):
            minute += 1
            status = "ok" if v is not None else "diverged"
            store.record_run(finished_run(exp_id, rung, seed, status=status, val_bpb=v, search_id=search_id,
                                          total_training_time=100.0, world_size=2,
                                          finished_at=T0 + timedelta(minutes=minute)), curve())
    store.record_run(Run(experiment_id="exp0001", rung="d4", seed=1, status="running", search_id=search_id))
    store.record_decision(Decision(experiment_id="exp0001", from_rung="d2", verdict="more_seeds", search_id=search_id))
    store.record_decision(Decision(experiment_id="exp0001", from_rung="d2", to_rung="d4", verdict="promote",
                                   search_id=search_id, baseline_experiment_id="exp0000", deltas=[-0.1, -0.1],
                                   mean_delta=-0.1, std_error=0.001, p_value=0.003, n=2, alpha=0.05, min_effect=0.01))
    store.record_decision(Decision(experiment_id="exp0002", from_rung="d2", verdict="reject", search_id=search_id))
    return search_id, val


def test_search_summary_trials_best_funnel_and_compute(store):
    search_id, val = build_search(store)
    summary = search_summary(store, search_id)
    assert summary["search"]["name"] == "s1" and summary["n_proposed"] == 3  # the baseline is recorded, not proposed
    assert summary["runs_by_status"] == {"ok": 8, "diverged": 1, "running": 1}
    assert summary["training_hours"] == pytest.approx(9 * 100 / 3600)
    # Compute is wall time x world size (Store.device_seconds): run k of 9 ran from T0 to T0 + k minutes on 2 devices.
    assert summary["device_hours"] == pytest.approx(2 * sum(range(1, 10)) * 60 / 3600)
    trials = summary["trials"]
    assert len(trials) == 9 and [t["finished_at"] for t in trials] == sorted(t["finished_at"] for t in trials)
    assert {t["experiment_id"]: t["role"] for t in trials} == {
        "exp0000": "baseline", "exp0001": "candidate", "exp0002": "candidate"}  # the baseline its decisions name
    # Best so far is the best promoted change's mean d, from the last run of its rung before the decision (all of
    # them here: the decisions were recorded after every run).
    assert [t["best_decided"] for t in trials if t["rung"] == "d2"] == [None] * 5 + [pytest.approx(-0.1)]
    assert [t["best_decided"] for t in trials if t["rung"] == "d4"] == [None] * 3
    # The one definition of best (leaderboard/ranking.py): decisions with a paired result, not raw val_bpb.
    assert summary["best"] == [{"experiment_id": "exp0001", "rung": "d2", "mean_delta": pytest.approx(-0.1), "n": 2,
                                "beats_baseline": True}]
    assert summary["funnel"] == [
        {"rung": "d2", "proposed": 3, "run": 3, "promoted": 1, "rejected": 1},
        {"rung": "d4", "proposed": 1, "run": 2, "promoted": 0, "rejected": 0}]
    assert search_summary(store, search_id + 100) is None


def test_search_summary_leaves_the_noise_floor_replica_out_of_best_and_funnel(store):
    search_id, _ = build_search(store)
    before = search_summary(store, search_id)
    # The search's noise-floor replica (the baseline with another init) lands a lucky low val_bpb at d2.
    store.record_experiment(Experiment(id="noise", name="baseline, another init", proposer=NOISE_FLOOR_PROPOSER))
    store.record_run(finished_run("noise", "d2", 0, val_bpb=1.0, search_id=search_id, total_training_time=100.0,
                                  finished_at=T0 + timedelta(hours=1)))
    store.record_decision(Decision(experiment_id="noise", from_rung="d2", verdict="promote", search_id=search_id,
                                   mean_delta=-0.5, n=1))
    summary = search_summary(store, search_id)
    assert summary["best"] == before["best"] and summary["funnel"] == before["funnel"]
    assert summary["trials"][-1]["experiment_id"] == "noise"  # it is a trial: it cost compute
    # Neither its lucky run nor its (impossible) promotion moves the best so far; it is shown as a null.
    assert summary["trials"][-1]["role"] == "null" and summary["trials"][-1]["best_decided"] == pytest.approx(-0.1)
    assert summary["training_hours"] == pytest.approx(before["training_hours"] + 100 / 3600)


def test_run_and_experiment_queries(store):
    search_id, val = build_search(store)
    assert len(store.runs(search_id=search_id)) == 10
    assert {r["seed"] for r in store.runs(experiment_id="exp0000", rung="d4")} == {0, 1}
    assert [r["status"] for r in store.runs(status=["diverged", "running"])] == ["diverged", "running"]
    assert "config" not in store.runs()[0] and "config" in store.runs(details=True)[0]
    ids = [r["id"] for r in store.runs(rung="d4", status="ok")]
    points = store.metric_points(ids)
    assert len(points) == 4 * len(ids) and {p["run_id"] for p in points} == set(ids)
    exp = store.experiment("exp0001")
    assert len(exp["runs"]) == 4 and [d["verdict"] for d in exp["decisions"]] == ["more_seeds", "promote"]
    assert store.experiment("missing") is None
    assert [e["id"] for e in store.experiments(search_id=search_id)] == ["exp0000", "exp0001", "exp0002", "exp0003"]
    promote = [d for d in store.decisions(search_id=search_id) if d["verdict"] == "promote"][0]
    assert promote["deltas"] == [-0.1, -0.1] and promote["p_value"] == 0.003
    keys = store.finished_keys(search_id)
    assert len(keys) == 9 and ("exp0001", "d4", 1) not in keys and ("exp0002", "d2", 1) in keys
    [listed] = store.searches()
    assert (listed["n_proposed"], listed["n_runs"], listed["n_finished"]) == (4, 10, 9)
    assert listed["training_hours"] == pytest.approx(0.25)


def test_row_queries_the_views_build_on(store):
    """The plain row queries leaderboard/views.py builds the search summary and the best runs from."""
    search_id, _ = build_search(store)
    assert store.search(search_id)["name"] == "s1" and store.search(search_id + 100) is None
    assert store.proposal_count(search_id) == 4 and store.proposal_count(search_id + 100) == 0
    assert store.proposal_count(search_id, excluding=["exp0000"]) == 3  # the baseline left out
    # Several experiments at once; only the columns asked for.
    assert [r["experiment_id"] for r in store.runs(experiment_id={"exp0002", "exp0000"}, rung="d2")] == \
        ["exp0000", "exp0000", "exp0002", "exp0002"]
    light = store.runs(search_id=search_id, status="ok", columns=("id", "val_bpb"))
    assert len(light) == 8 and all(set(r) == {"id", "val_bpb"} for r in light)
    assert [r["id"] for r in light] == sorted(r["id"] for r in light)
    with pytest.raises(ValueError, match="no column nope"):
        store.runs(columns=("id", "nope"))
    # By id: unknown ids left out, ordered by id, across more ids than one IN list holds.
    ids = [r["id"] for r in store.runs()]
    assert [r["id"] for r in store.runs_by_id([ids[3], ids[1], 10**9, ids[3]])] == [ids[1], ids[3]]
    assert [r["id"] for r in store.runs_by_id(range(1, 2000))] == ids and store.runs_by_id([]) == []
    assert "config" not in store.runs_by_id(ids)[0]
    found = store.experiments_by_id(["exp0003", "exp0001", "missing"])
    assert [x["id"] for x in found] == ["exp0001", "exp0003"] and "patch" not in found[0] and "tweaks" in found[0]
    assert store.experiments_by_id(["exp0001"], columns=["id", "proposer"]) == [{"id": "exp0001", "proposer": "manual"}]
    decided = store.decisions(search_id=search_id, columns=("experiment_id", "verdict"))
    assert decided == [{"experiment_id": "exp0001", "verdict": "more_seeds"},
                       {"experiment_id": "exp0001", "verdict": "promote"},
                       {"experiment_id": "exp0002", "verdict": "reject"}]
    assert store.entries() == []
    store.record_track(Track(name="t", metric="val_bpb", target=1.0))
    store.record_track(Track(name="u", metric="val_bpb", target=1.0))
    first = store.record_entry(Entry(track="u", recipe="a", run_ids=[ids[0]]))
    second = store.record_entry(Entry(track="t", recipe="b"))
    assert [e["id"] for e in store.entries()] == [first, second]
    assert [e["recipe"] for e in store.entries("t")] == ["b"] and store.entries("nope") == []


def test_a_run_failed_for_the_machine_is_reopened_and_completed_once(store):
    store.record_run(finished_run("exp0001", status="crash", failure_class="crash", val_bpb=None,
                                  reason="No space left on device"), curve(2), experiment=experiment(1))
    store.record_run(finished_run("exp0001", seed=1), curve(3))
    assert store.reopen_run("exp0001", "d2", 0) is True
    [reopened] = [r for r in store.runs() if r["seed"] == 0]
    assert (reopened["status"], reopened["reason"], reopened["finished_at"]) == ("running", None, None)
    assert store.metric_points([reopened["id"]]) == []  # its points go with its failed attempt
    assert store.reopen_run("exp0001", "d2", 1) is False  # a finished ok run is never reopened
    assert store.record_run(finished_run("exp0001"), curve(4)).action == "completed"
    [done] = [r for r in store.runs() if r["seed"] == 0]
    assert done["status"] == "ok" and len(store.metric_points([done["id"]])) == 4


def test_search_is_reopened_by_name(store):
    first = store.start_search("s1", tier="cpu")
    store.finish_search(first, "failed", "the baseline failed at d2 seed 0")
    assert (store.find_search("s1")["status"], store.find_search("s1")["reason"]) == ("failed", "the baseline failed at d2 seed 0")
    assert store.start_search("s1", tier="cpu") == first
    reopened = store.find_search("s1")
    assert reopened["status"] == "running" and reopened["finished_at"] is None and reopened["reason"] is None


def as_older_version(db_url: str, version: int, *statements: str) -> None:
    """Turn a current database back into one an older release made: run `statements`, record `version`."""
    engine = sa.create_engine(resolve_url(db_url))
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql(f"UPDATE schema_info SET value = '{version}' WHERE key = 'version'")
    engine.dispose()


def test_a_v4_database_gets_the_failure_reason_column(db_url):
    """v5 adds searches.reason to a database whose searches table v2-v4 made without it."""
    with Store(db_url) as store:
        store.start_search("old", tier="cpu")
    as_older_version(db_url, 4, "ALTER TABLE searches DROP COLUMN reason")
    with Store(db_url) as store:
        assert store.schema_version == SCHEMA_VERSION
        old = store.find_search("old")
        assert old["status"] == "running" and old["reason"] is None
        store.finish_search(old["id"], "failed", "disk full")
        assert store.find_search("old")["reason"] == "disk full"


def test_a_v5_database_gets_the_sealed_column_and_keeps_its_runs(db_url):
    """v6 adds runs.sealed (a patched run's sealed re-score); runs recorded before keep their values, sealed NULL."""
    with Store(db_url) as store:
        store.record_experiment(experiment(1))
        store.record_run(Run(experiment_id="exp0001", rung="d2", seed=0, status="ok", val_bpb=2.5))
    as_older_version(db_url, 5, "ALTER TABLE runs DROP COLUMN sealed")
    with Store(db_url) as store:
        assert store.schema_version == SCHEMA_VERSION
        [old] = store.runs(experiment_id="exp0001")
        assert old["val_bpb"] == 2.5 and old["sealed"] is None
        sealed = {"val_bpb": 2.4, "reported_val_bpb": 1.2, "causal": True, "sandboxed": True}
        store.record_run(Run(experiment_id="exp0001", rung="d2", seed=1, status="metric_mismatch", val_bpb=2.4,
                             sealed=sealed, reason="it reported val_bpb 1.2"))
        assert store.runs(experiment_id="exp0001", status=("metric_mismatch",))[0]["sealed"] == sealed


def test_a_v6_database_gets_the_decision_reason_column_and_keeps_its_decisions(db_url):
    """v7 adds decisions.reason; decisions recorded before keep their numbers, reason NULL."""
    with Store(db_url) as store:
        store.record_experiment(experiment(1))
        store.record_decision(Decision(experiment_id="exp0001", from_rung="d2", verdict="reject", mean_delta=0.01, n=3))
    as_older_version(db_url, 6, "ALTER TABLE decisions DROP COLUMN reason")
    with Store(db_url) as store:
        assert store.schema_version == SCHEMA_VERSION
        [old] = store.decisions(experiment_id="exp0001")
        assert (old["mean_delta"], old["n"], old["reason"]) == (0.01, 3, None)
        store.record_decision(Decision(experiment_id="exp0001", from_rung="d2", verdict="promote", reason="in words"))
        assert [d["reason"] for d in store.decisions(experiment_id="exp0001")] == [None, "in words"]


def test_a_v7_database_gets_notes_and_tags_and_an_experiment_takes_them(db_url):
    """v8 adds experiments.notes and .tags; experiments recorded before keep theirs empty until annotated."""
    with Store(db_url) as store:
        store.record_experiment(experiment(1))
    as_older_version(db_url, 7, "ALTER TABLE experiments DROP COLUMN notes", "ALTER TABLE experiments DROP COLUMN tags")
    with Store(db_url) as store:
        assert store.schema_version == SCHEMA_VERSION
        old = store.experiment("exp0001")
        assert (old["notes"], old["tags"]) == (None, None)
        store.annotate_experiment("exp0001", "worth a d4 look", [" keep", "lr", "keep", ""])
        assert (store.experiment("exp0001")["notes"], store.experiment("exp0001")["tags"]) == ("worth a d4 look",
                                                                                                ["keep", "lr"])
        store.annotate_experiment("exp0001", None, [])  # cleared
        assert (store.experiment("exp0001")["notes"], store.experiment("exp0001")["tags"]) == (None, None)
        with pytest.raises(LeaderboardError, match="experiment 'nope': not in this database"):
            store.annotate_experiment("nope", "x", [])
        with pytest.raises(LeaderboardError, match="expected at most 64 characters"):
            store.annotate_experiment("exp0001", "x", ["t" * 65])


def test_leaderboard_ranks_by_time_to_target(store):
    store.record_track(Track(name="gpt2", metric="core", target=0.256525, depth=24, hardware="8xH100"))
    store.record_track(Track(name="gpt2", metric="core", target=0.256525, depth=24, hardware="8xH100",
                             description="GPT-2 CORE speedrun"))
    store.record_experiment(experiment(1))
    for recipe, ttt in [("slow", 3.0 * 3600), ("unfinished", None), ("fast", 2.5 * 3600)]:
        store.record_entry(Entry(track="gpt2", recipe=recipe, time_to_target_mean=ttt, seeds=3, source="test"))
    store.record_entry(Entry(track="gpt2", recipe="ours", experiment_id="exp0001", time_to_target_mean=2.8 * 3600,
                             is_record=True, run_ids=[1, 2, 3]))
    board = store.leaderboard("gpt2")
    assert [(e["rank"], e["recipe"]) for e in board] == [(1, "fast"), (2, "ours"), (3, "slow"), (None, "unfinished")]
    assert board[1]["run_ids"] == [1, 2, 3] and board[1]["is_record"] is True
    assert [t["description"] for t in store.tracks()] == ["GPT-2 CORE speedrun"]
    assert store.leaderboard("no-such-track") == []


def test_a_null_spread_is_replaced_by_a_new_measurement_of_its_kind(store):
    store.record_null_spread("cpu", "d2", "structural", std=0.02, n=3)
    store.record_null_spread("cpu", "d2", "parametric", std=0.0004, n=3)
    store.record_null_spread("cpu", "d2", "structural", std=0.015, n=5)
    floor = store.null_spread("cpu", "d2", "structural")
    assert (floor["std"], floor["n"]) == (0.015, 5)
    assert store.null_spread("cpu", "d2", "parametric")["std"] == 0.0004
    assert [(r["rung"], r["kind"]) for r in store.null_spreads("cpu")] == [("d2", "parametric"), ("d2", "structural")]
    assert store.null_spread("cpu", "d4", "structural") is None
    with pytest.raises(LeaderboardError, match="null spread kind 'both'"):
        store.record_null_spread("cpu", "d2", "both", std=0.1, n=1)


# ---------------------------------------------------------------- many writers at once

WORKERS, RUNS_PER_WORKER, POINTS_PER_RUN = 8, 200, 3


def _key(k: int) -> tuple[str, str, int]:
    return f"e{k // 4:04d}", ("d2", "d4")[k % 2], (k // 2) % 2


def _expected_val_bpb(k: int) -> float:
    return 1.5 + k / 10_000


def _writer(url: str, worker: int) -> None:
    # Worker w records keys [100w, 100w + 200): each key is also recorded by a neighbour, at about the same time.
    with Store(url) as store:
        for k in range(100 * worker, 100 * worker + RUNS_PER_WORKER):
            exp_id, rung, seed = _key(k)
            exp = Experiment(id=exp_id, name=exp_id)
            if k % 5 == 0:  # some runs are first seen running, then completed
                store.record_run(Run(experiment_id=exp_id, rung=rung, seed=seed, status="running"), experiment=exp)
            points = [{"step": s, "val_bpb": _expected_val_bpb(k) + s} for s in range(POINTS_PER_RUN)]
            store.record_run(Run(experiment_id=exp_id, rung=rung, seed=seed, status="ok", val_bpb=_expected_val_bpb(k)),
                             points, experiment=exp)


def test_concurrent_writers_lose_nothing_and_duplicate_nothing(db_url):
    Store(db_url).close()  # schema first, so the workers race on data (opening concurrently is tested below)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db_url, w)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * WORKERS
    keys = {_key(k): k for k in range(100 * (WORKERS - 1) + RUNS_PER_WORKER)}
    with Store(db_url) as store:
        runs = store.runs()
        assert len(runs) == len(keys) == 900
        assert {(r["experiment_id"], r["rung"], r["seed"]) for r in runs} == set(keys)
        assert all(r["status"] == "ok" and r["val_bpb"] == _expected_val_bpb(keys[(r["experiment_id"], r["rung"],
                                                                                   r["seed"])]) for r in runs)
        points = store.metric_points(r["id"] for r in runs)
        assert len(points) == POINTS_PER_RUN * len(keys)
        assert count(store, "experiments") == len({k[0] for k in keys})


def _opener(url: str) -> None:
    Store(url).close()


def test_concurrent_first_opens_create_the_schema_once(db_url):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_opener, args=(db_url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 4
    with Store(db_url) as store:
        assert store.schema_version == SCHEMA_VERSION


def test_sqlite_locked_database_is_retried_not_failed(tmp_path, monkeypatch):
    # Another connection holds the write lock longer than the busy timeout: the writer retries until it is free.
    url = f"sqlite:///{tmp_path / 'lb.db'}"
    with Store(url) as store:
        store.record_experiment(experiment(1))
    monkeypatch.setattr("leaderboard.store.SQLITE_BUSY_TIMEOUT_MS", 50)
    holder = sqlite3.connect(tmp_path / "lb.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1.0, holder.rollback)
    release.start()
    with Store(url) as store:
        assert store.record_run(finished_run("exp0001")).action == "inserted"
    release.join()
    holder.close()
