"""Rejected proposals in the store (schema v3): recorded with their reason and payload, listed per search, and a
v2 database upgrades to v3 in place with its data kept.

Same databases as tests/test_store.py (its `db_url` fixture: SQLite, and PostgreSQL when available).
"""
# ruff: noqa: F811  (tests take the imported `db_url` fixture as an argument, which ruff reads as a redefinition)

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from leaderboard import Decision, LeaderboardError, RejectedProposal, Store
from leaderboard import schema as lb_schema
from leaderboard.schema import SCHEMA_VERSION
from leaderboard.store import resolve_url
from tests.test_store import db_url  # noqa: F401
from tests.test_store_noise import write_v3_schema


def test_rejected_proposals_are_kept_per_search_with_reason_and_payload(db_url):
    with Store(db_url) as store:
        a, b = store.start_search("a"), store.start_search("b")
        first = store.record_rejected_proposal(RejectedProposal(
            search_id=a, proposer="agent", reason="knob 'qk_scale'=99: expected a value in [0.8, 2]",
            payload={"tweaks": {"qk_scale": 99}, "rationale": "sharper", "agent": {"cost_usd": 0.01}}))
        store.record_rejected_proposal(RejectedProposal(search_id=b, proposer="optuna", reason="duplicate of e1"))
        second = store.record_rejected_proposal(RejectedProposal(
            search_id=a, proposer="agent", reason="no tool call", payload={"loss": float("nan")}))
        rows = store.rejected_proposals(a)
        assert [r["id"] for r in rows] == [first, second]  # oldest first, only this search's
        assert rows[0]["payload"] == {"tweaks": {"qk_scale": 99}, "rationale": "sharper", "agent": {"cost_usd": 0.01}}
        assert rows[0]["reason"].startswith("knob 'qk_scale'=99") and rows[0]["proposer"] == "agent"
        assert rows[0]["created_at"].tzinfo is not None
        assert rows[1]["payload"] == {"loss": None}  # NaN is not JSON: stored as null, like everywhere else
        assert [r["reason"] for r in store.rejected_proposals(b)] == ["duplicate of e1"]
        assert store.rejected_proposals(b + 100) == []
        assert store.counts()["rejected_proposals"] == 3


@pytest.mark.parametrize("build,expected", [
    (lambda: RejectedProposal(search_id="1", proposer="agent", reason="r"), "search_id '1'"),
    (lambda: RejectedProposal(search_id=1, proposer="", reason="r"), "proposer ''"),
    (lambda: RejectedProposal(search_id=1, proposer="agent", reason="  "), "reason '  '"),
    (lambda: RejectedProposal(search_id=1, proposer="agent", reason="r", payload=[1]), "payload [1]"),
])
def test_bad_rejected_proposals_name_the_bad_value(build, expected):
    with pytest.raises(LeaderboardError) as info:
        build()
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_rejected_proposal_of_an_unknown_search_is_refused(db_url):
    with Store(db_url) as store:
        with pytest.raises(LeaderboardError):
            store.record_rejected_proposal(RejectedProposal(search_id=999, proposer="agent", reason="r"))
        assert store.counts()["rejected_proposals"] == 0


def _write_v2_database(db_url: str) -> None:
    """A v2 database: v3 is v2 plus the rejected_proposals table, so v2 is v3's tables without it, version 2, with a
    search, a run and a decision in it."""
    engine = sa.create_engine(resolve_url(db_url))
    t0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with engine.begin() as conn:
        write_v3_schema(conn)
        conn.exec_driver_sql("DROP TABLE rejected_proposals")
        conn.execute(sa.insert(lb_schema.schema_info).values(key="version", value="2"))
        conn.execute(sa.insert(lb_schema.searches).values(id=1, name="old", tier="cpu", status="finished", started_at=t0))
        conn.execute(sa.insert(lb_schema.experiments).values(id="base01", name="baseline", tweaks={}, proposer="baseline",
                                                             created_at=t0, extra={"agent": {"cost_usd": 0.5}}))
        conn.exec_driver_sql("INSERT INTO runs (experiment_id, rung, seed, status, val_bpb, search_id) "
                             "VALUES ('base01', 'd1', 0, 'ok', 1.75, 1)")
        conn.exec_driver_sql("INSERT INTO decisions (experiment_id, from_rung, verdict, search_id, mean_delta, created_at) "
                             "VALUES ('base01', 'd1', 'reject', 1, 0.01, '2026-01-02 03:04:05+00')")
    engine.dispose()


def test_v2_database_is_upgraded_with_data_kept(db_url):
    _write_v2_database(db_url)
    with pytest.raises(Exception, match="schema version 2, older than"):  # the dashboard never upgrades
        Store(db_url, read_only=True)
    with Store(db_url) as store:
        assert store.schema_version == SCHEMA_VERSION
        old = store.find_search("old")
        assert old["status"] == "finished"
        assert store.experiment("base01")["extra"] == {"agent": {"cost_usd": 0.5}}
        assert [r["val_bpb"] for r in store.runs(search_id=old["id"])] == [1.75]
        assert [d["mean_delta"] for d in store.decisions(search_id=old["id"])] == [0.01]
        # What v3 adds works on the upgraded database, beside the old rows.
        assert store.rejected_proposals(old["id"]) == []
        store.record_rejected_proposal(RejectedProposal(search_id=old["id"], proposer="agent", reason="late"))
        store.record_decision(Decision(experiment_id="base01", from_rung="d1", verdict="promote", search_id=old["id"]))
        assert [r["reason"] for r in store.rejected_proposals(old["id"])] == ["late"]
        upgraded = store.counts()
    with Store(db_url) as again:  # reopening an up-to-date database changes nothing
        assert again.counts() == upgraded and again.schema_version == SCHEMA_VERSION
    with Store(db_url, read_only=True) as reader:
        assert [r["reason"] for r in reader.rejected_proposals(old["id"])] == ["late"]
