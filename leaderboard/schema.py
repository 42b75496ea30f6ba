"""The leaderboard's tables, as SQLAlchemy Core metadata (the current schema version).

Plain table and column names on purpose: the dashboard, the harness and ad-hoc SQL all query them.
Older databases are brought up to this shape by `leaderboard.migrations`; bump SCHEMA_VERSION and add
a migration there whenever a table or column changes here.

Conventions that hold for every table:
- timestamps are stored in UTC and come back timezone-aware (`UTCDateTime`);
- floats that are not finite (a diverged run's NaN loss) are stored as NULL (`Real`): NaN is not a
  measurement, the run's status says what happened, and SQLite and PostgreSQL disagree on storing NaN;
- JSON columns are JSON on SQLite and JSONB on PostgreSQL (indexable, comparable).
"""

import math
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

SCHEMA_VERSION = 10

# metric_mismatch and not_causal: a patched run whose sealed re-score (model/seal.py) disagreed with what it reported,
# or whose model let a position see later tokens. They count as failed runs of their experiment.
RUN_STATUSES = ("running", "ok", "diverged", "failed", "timeout", "oom", "crash", "metric_mismatch", "not_causal")
VERDICTS = ("promote", "reject", "more_seeds")
CHANGE_KINDS = ("parametric", "structural")  # which noise a change is judged against (search_spaces/knobs.py)
# The proposer of a search's own null runs (the baseline with another init, or with a setting moved by a factor too
# small to matter): their runs measure noise, so summaries leave them out of "best" and of the funnel.
NOISE_FLOOR_PROPOSER = "noise-floor"
# A hypothesis's standing (harness/hypotheses.py), in the order ledgers list them: what the decisions settled first,
# pending (its experiment not decided yet) last.
HYPOTHESIS_STATUSES = ("supported", "refuted", "failed", "inconclusive", "pending")
# An insight is active (shown to the next search), retired by a user, or superseded by a later distillation.
INSIGHT_STATUSES = ("active", "retired", "superseded")


class UTCDateTime(sa.TypeDecorator):
    """Timezone-aware datetimes in, UTC datetimes out, on both backends (SQLite keeps no offset)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: expected a timezone-aware datetime")
        value = value.astimezone(UTC)
        # SQLite's DATETIME has no offset: store the UTC wall time.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Real(sa.TypeDecorator):
    """Double precision where NaN and +-inf are stored as NULL (see the module docstring)."""

    impl = sa.Double
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = float(value)
        return value if math.isfinite(value) else None


JSONValue = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


metadata = sa.MetaData()

schema_info = sa.Table(
    "schema_info", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# An experiment is a recipe (tweaks on the baseline + code version); its id is a content hash, so the
# same proposal made twice, or by two workers, is one row.
experiments = sa.Table(
    "experiments", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    # Not a foreign key: a parent may be a recipe recorded in another database (imported, published).
    sa.Column("parent_id", sa.String(64)),
    sa.Column("tweaks", JSONValue),
    sa.Column("rationale", sa.Text),
    sa.Column("proposer", sa.String(64), nullable=False),
    sa.Column("code_version", sa.Text),
    sa.Column("patch", sa.Text),
    sa.Column("extra", JSONValue),  # falsification criterion, agent tokens/cost, ...
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("notes", sa.Text),  # a researcher's notes on it (the dashboard's Experiment page edits them)
    sa.Column("tags", JSONValue),  # ... and tags: a list of short strings
)

searches = sa.Table(
    "searches", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("tier", sa.String(64)),
    sa.Column("space", sa.Text),
    sa.Column("proposer", sa.String(64)),
    sa.Column("config", JSONValue),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("reason", sa.Text),  # why a failed search failed (one line)
    sa.Column("summary", sa.Text),  # what the search printed at its end (results, what next), for its report card
)

# Which experiments a search proposed (also those that never ran): the top of the rung funnel.
proposals = sa.Table(
    "proposals", metadata,
    sa.Column("search_id", sa.Integer, sa.ForeignKey("searches.id"), primary_key=True),
    sa.Column("experiment_id", sa.String(64), sa.ForeignKey("experiments.id"), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("experiment_id", sa.String(64), sa.ForeignKey("experiments.id"), nullable=False),
    sa.Column("rung", sa.String(64), nullable=False),
    sa.Column("depth", sa.Integer),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("failure_class", sa.String(64)),
    sa.Column("reason", sa.Text),
    sa.Column("hardware", sa.Text),
    sa.Column("world_size", sa.Integer),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("config", JSONValue),
    sa.Column("run_dir", sa.Text),
    sa.Column("val_bpb", Real),
    sa.Column("core", Real),
    sa.Column("total_training_time", Real),
    sa.Column("time_to_target", Real),
    sa.Column("tokens", sa.BigInteger),
    sa.Column("flops", Real),  # a d24 speedrun is ~4e19 FLOPs: past BIGINT
    sa.Column("peak_memory_bytes", sa.BigInteger),
    sa.Column("steps", sa.Integer),
    sa.Column("tok_per_s", Real),  # training throughput (timed steps only): speed, measured apart from the result
    sa.Column("loaded", sa.Boolean),  # far below its rung's calibrated throughput (NULL: no calibration to judge by)
    sa.Column("cost", Real),
    sa.Column("log_tail", sa.Text),
    # A patched run's sealed re-score: val_bpb (and core) from trusted code, what the run reported, the causality
    # probe, whether it ran sandboxed (harness/runs.py, sealed_outcome). NULL for runs of the checkout's own code.
    sa.Column("sealed", JSONValue),
    sa.Column("search_id", sa.Integer, sa.ForeignKey("searches.id")),
    # The resume key: an (experiment, rung, seed) is run once, whichever worker gets it.
    sa.UniqueConstraint("experiment_id", "rung", "seed", name="uq_runs_key"),
    sa.Index("ix_runs_search_finished", "search_id", "finished_at"),
    sa.Index("ix_runs_status", "status"),
    sa.Index("ix_runs_rung", "rung"),
)

metric_points = sa.Table(
    "metric_points", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("tokens", sa.BigInteger),
    sa.Column("elapsed_train_s", Real),
    sa.Column("train_loss", Real),
    sa.Column("val_bpb", Real),
    sa.Column("core", Real),
    sa.Column("tok_per_s", Real),
    sa.Column("mfu", Real),
)

decisions = sa.Table(
    "decisions", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("experiment_id", sa.String(64), sa.ForeignKey("experiments.id"), nullable=False),
    sa.Column("search_id", sa.Integer, sa.ForeignKey("searches.id")),
    sa.Column("from_rung", sa.String(64), nullable=False),
    sa.Column("to_rung", sa.String(64)),
    sa.Column("baseline_experiment_id", sa.String(64), sa.ForeignKey("experiments.id")),
    sa.Column("deltas", JSONValue),  # per seed: candidate - baseline
    sa.Column("mean_delta", Real),
    sa.Column("std_error", Real),
    sa.Column("p_value", Real),
    sa.Column("n", sa.Integer),
    sa.Column("alpha", Real),  # the level this look was tested at: the tier's alpha spread over its sequential looks
    sa.Column("min_effect", Real),
    sa.Column("noise_floor", Real),  # the null spread of the change's kind at the rung: the spread's lower bound
    sa.Column("kind", sa.String(16)),  # parametric | structural
    sa.Column("spread", Real),  # the standard deviation of paired differences the test used (moderated, floored)
    sa.Column("df", Real),  # its degrees of freedom
    sa.Column("mde", Real),  # minimum detectable effect (bpb) at the test's power, alpha and n
    sa.Column("compute_multiplier", Real),  # baseline compute to reach the candidate's val_bpb / the candidate's
    sa.Column("multiplier_extrapolated", sa.Boolean),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),  # why, in words: the sentence the search printed
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_decisions_search", "search_id", "from_rung"),
    sa.Index("ix_decisions_experiment", "experiment_id"),
)

# The measured spread of paired null differences at a rung, per scope (a search name or a tier) and kind of change:
# a root mean square around zero (harness/noise.py).
null_spreads = sa.Table(
    "null_spreads", metadata,
    sa.Column("scope", sa.Text, primary_key=True),
    sa.Column("rung", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("std", Real, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("baseline_experiment_id", sa.String(64), sa.ForeignKey("experiments.id")),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Proposals turned away before becoming an experiment: outside the search space, duplicates, malformed agent
# answers, patches that did not apply or failed their checks. Kept with the reason, so the proposer (and the
# user) can see what was tried and why it was refused; `payload` is the proposal as it came (untrusted).
rejected_proposals = sa.Table(
    "rejected_proposals", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("search_id", sa.Integer, sa.ForeignKey("searches.id"), nullable=False),
    sa.Column("proposer", sa.String(64), nullable=False),
    sa.Column("payload", JSONValue),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_rejected_proposals_search", "search_id", "created_at"),
)

# The hypothesis a proposal states (its rationale and falsification criterion), and how its decisions judged it:
# supported, refuted, inconclusive (too small to see at its seeds), failed (its runs failed), with the numbers.
hypotheses = sa.Table(
    "hypotheses", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("search_id", sa.Integer, sa.ForeignKey("searches.id"), nullable=False),
    sa.Column("experiment_id", sa.String(64), sa.ForeignKey("experiments.id"), nullable=False),
    sa.Column("statement", sa.Text, nullable=False),
    sa.Column("falsification", sa.Text),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("evidence", JSONValue),  # rung reached, mean delta, MDE, p, n, compute multiplier, the rule applied
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("resolved_at", UTCDateTime),
    sa.UniqueConstraint("search_id", "experiment_id", name="uq_hypotheses_search_experiment"),
)

# What the evidence of searches on a tier and search space says, distilled by the agent into short numbered
# statements tied to the hypotheses behind them; the next search on that tier and space starts from the active ones.
# A user may edit one (author becomes "user": a later distillation keeps it) or retire it.
insights = sa.Table(
    "insights", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tier", sa.String(64), nullable=False),
    sa.Column("space", sa.Text, nullable=False),
    sa.Column("search_id", sa.Integer, sa.ForeignKey("searches.id")),  # the search whose distillation wrote it
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("hypothesis_ids", JSONValue),  # the hypotheses (ids) that support it
    sa.Column("author", sa.String(16), nullable=False),  # agent | user
    sa.Column("agent", JSONValue),  # its share of the distilling call's tokens and cost (as experiments.extra["agent"])
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index("ix_insights_scope", "tier", "space", "status"),
)

tracks = sa.Table(
    "tracks", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("description", sa.Text),
    sa.Column("metric", sa.String(64), nullable=False),  # what the target is on: "core", "val_bpb"
    sa.Column("target", Real),
    sa.Column("depth", sa.Integer),
    sa.Column("hardware", sa.Text),
    sa.Column("timing_rule", sa.Text),
    sa.Column("config", JSONValue),
)

entries = sa.Table(
    "entries", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("track", sa.String(128), sa.ForeignKey("tracks.name"), nullable=False),
    sa.Column("experiment_id", sa.String(64), sa.ForeignKey("experiments.id")),  # NULL for published entries
    sa.Column("recipe", sa.Text, nullable=False),
    sa.Column("seeds", sa.Integer),
    sa.Column("time_to_target_mean", Real),
    sa.Column("time_to_target_std", Real),
    sa.Column("metric_mean", Real),
    sa.Column("metric_std", Real),
    sa.Column("val_bpb", Real),
    sa.Column("p_value", Real),
    sa.Column("is_record", sa.Boolean, nullable=False),
    sa.Column("code_version", sa.Text),
    sa.Column("command", sa.Text),
    sa.Column("source", sa.Text),  # e.g. "nanochat README" for published reference entries
    sa.Column("run_ids", JSONValue),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_entries_track_ttt", "track", "time_to_target_mean"),
)
