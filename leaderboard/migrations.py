"""Bringing a database to the current schema: create it when empty, upgrade it in place when older.

The schema version lives in the database (`schema_info`, key "version"). Each migration upgrades from
version N-1 to N and only does what `metadata.create_all` cannot: adding columns to existing tables and
moving data. Tables and indexes that are missing are created from `leaderboard.schema` afterwards, so
they are declared once, there.

History:
  v1  the run-dir store: experiments, runs, metric_points, tracks, entries.
  v2  the search harness: searches, proposals, decisions, noise_floors; runs.search_id; experiments.extra.
  v3  rejected_proposals: proposals turned away (out of space, duplicate, malformed, failed patch) and why.
  v4  noise per kind of change and power: null_spreads (scope, rung, kind) replaces noise_floors (its rows kept as
      structural: they were the baseline against itself with another init); decisions.kind/spread/df/mde/
      compute_multiplier/multiplier_extrapolated; runs.tok_per_s/loaded.
  v5  searches.reason: why a failed search failed.
  v6  runs.sealed: a patched run's sealed re-score (statuses metric_mismatch and not_causal are new values only).
  v7  decisions.reason: why, in words (older decisions keep NULL: the dashboard says they predate it).
  v8  experiments.notes and experiments.tags: a researcher's annotations, edited on the dashboard.
  v9  searches.summary: what the search printed at its end.
  v10 hypotheses (each proposal's hypothesis and how its decisions judged it) and insights (distilled per tier and
      space): new tables only.
"""

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.schema import CreateColumn

from leaderboard import schema
from leaderboard.errors import SchemaError


def add_column(conn: sa.Connection, column: sa.Column) -> None:
    """ALTER TABLE ... ADD COLUMN for a column declared in `schema` (type and references as declared)."""
    spec = CreateColumn(column).compile(dialect=conn.dialect)
    references = "".join(f" REFERENCES {fk.column.table.name} ({fk.column.name})" for fk in column.foreign_keys)
    conn.exec_driver_sql(f"ALTER TABLE {column.table.name} ADD COLUMN {spec}{references}")


def _v2_search_harness(conn: sa.Connection) -> None:
    schema.searches.create(conn, checkfirst=True)  # runs.search_id references it
    add_column(conn, schema.experiments.c.extra)
    add_column(conn, schema.runs.c.search_id)


def _v3_rejected_proposals(conn: sa.Connection) -> None:
    schema.rejected_proposals.create(conn, checkfirst=True)  # a new table only: no existing row changes


def _v4_noise_per_kind(conn: sa.Connection) -> None:
    tables = set(sa.inspect(conn).get_table_names())
    if "decisions" in tables:  # a v1 database gets the whole table from the schema afterwards
        for column in ("kind", "spread", "df", "mde", "compute_multiplier", "multiplier_extrapolated"):
            add_column(conn, schema.decisions.c[column])
    for column in ("tok_per_s", "loaded"):
        add_column(conn, schema.runs.c[column])
    schema.null_spreads.create(conn, checkfirst=True)
    if "noise_floors" in tables:
        conn.exec_driver_sql("INSERT INTO null_spreads (scope, rung, kind, std, n, baseline_experiment_id, updated_at) "
                             "SELECT scope, rung, 'structural', std, n, baseline_experiment_id, updated_at FROM noise_floors")
        conn.exec_driver_sql("DROP TABLE noise_floors")


def _v5_search_reason(conn: sa.Connection) -> None:
    inspector = sa.inspect(conn)
    if "searches" in inspector.get_table_names():  # (v2 creates it from today's declaration, reason included)
        if "reason" not in {c["name"] for c in inspector.get_columns("searches")}:
            add_column(conn, schema.searches.c.reason)


def _v6_sealed_runs(conn: sa.Connection) -> None:
    inspector = sa.inspect(conn)
    if "runs" in inspector.get_table_names() and "sealed" not in {c["name"] for c in inspector.get_columns("runs")}:
        add_column(conn, schema.runs.c.sealed)


def _v7_decision_reason(conn: sa.Connection) -> None:
    inspector = sa.inspect(conn)
    if "decisions" in inspector.get_table_names() and "reason" not in {c["name"] for c in inspector.get_columns("decisions")}:
        add_column(conn, schema.decisions.c.reason)


def _v8_experiment_notes(conn: sa.Connection) -> None:
    inspector = sa.inspect(conn)
    if "experiments" in inspector.get_table_names():
        have = {c["name"] for c in inspector.get_columns("experiments")}
        for column in ("notes", "tags"):
            if column not in have:
                add_column(conn, schema.experiments.c[column])


def _v9_search_summary(conn: sa.Connection) -> None:
    inspector = sa.inspect(conn)
    if "searches" in inspector.get_table_names() and "summary" not in {c["name"] for c in inspector.get_columns("searches")}:
        add_column(conn, schema.searches.c.summary)


def _v10_hypotheses_and_insights(conn: sa.Connection) -> None:
    pass  # new tables only: created from the schema after the migrations


# version -> the migration that upgrades version-1 to it. Append only; never edit a released one.
MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {
    2: _v2_search_harness,
    3: _v3_rejected_proposals,
    4: _v4_noise_per_kind,
    5: _v5_search_reason,
    6: _v6_sealed_runs,
    7: _v7_decision_reason,
    8: _v8_experiment_notes,
    9: _v9_search_summary,
    10: _v10_hypotheses_and_insights,
}
assert sorted(MIGRATIONS) == list(range(2, schema.SCHEMA_VERSION + 1)), "a migration per version after v1"


def read_version(conn: sa.Connection) -> int:
    """The database's schema version; 0 for a database without our tables."""
    tables = set(sa.inspect(conn).get_table_names())
    if "schema_info" not in tables:
        if "experiments" in tables or "runs" in tables:
            raise SchemaError("database has 'experiments'/'runs' tables but no schema_info: "
                              "expected an empty database or a nanoresearch leaderboard")
        return 0
    value = conn.execute(sa.select(schema.schema_info.c.value).where(schema.schema_info.c.key == "version")).scalar()
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SchemaError(f"schema_info version {value!r}: expected an integer") from None


def check_version(version: int) -> None:
    if version > schema.SCHEMA_VERSION:
        raise SchemaError(f"database schema version {version} is newer than this nanoresearch's "
                          f"({schema.SCHEMA_VERSION}): upgrade nanoresearch to use this database")


def bring_up_to_date(conn: sa.Connection) -> int:
    """Create or upgrade the schema inside the caller's transaction (which must hold the database's
    write lock, so concurrent openers cannot both migrate). Returns the version found."""
    found = read_version(conn)
    check_version(found)
    if found == schema.SCHEMA_VERSION:
        return found
    for version in range(found + 1, schema.SCHEMA_VERSION + 1):
        if found > 0:  # an empty database gets the current tables directly
            MIGRATIONS[version](conn)
    schema.metadata.create_all(conn, checkfirst=True)
    for table in schema.metadata.sorted_tables:  # indexes of tables that existed before
        for index in table.indexes:
            index.create(conn, checkfirst=True)
    if found == 0:
        conn.execute(sa.insert(schema.schema_info).values(key="version", value=str(schema.SCHEMA_VERSION)))
    else:
        conn.execute(sa.update(schema.schema_info).where(schema.schema_info.c.key == "version")
                     .values(value=str(schema.SCHEMA_VERSION)))
    return found
