"""The dashboard's database: which URL (sidebar, else --db, else $NANORESEARCH_DB, else the default file),
opened read-only, with every query cached briefly per URL.

Reading never writes: a SQLite file that does not exist yet is reported as such instead of being created, and
an older schema is not upgraded (see `Store(read_only=True)`). The user's own edits (an experiment's notes and tags,
an insight's text or retirement) are the only writes, each through a store opened for it alone. Reads are cached for
CACHE_TTL_S so that a page render, and every widget interaction after it, costs no query; the sidebar's
Refresh button drops the caches at once.
"""

import os
import sys
from pathlib import Path
from typing import Any

import streamlit as st

from leaderboard import views
from leaderboard.store import DEFAULT_URL, Store, resolve_url

CACHE_TTL_S = 30
CONNECT_TIMEOUT_S = 5  # an unreachable server is reported after this long, not the store's default 10 s
URL_KEY = "db_url"  # session-state key of the sidebar's URL field


def flag_url(argv: list[str]) -> str | None:
    """`streamlit run leaderboard/app.py -- --db URL`: scanned by hand rather than with argparse, which
    exits the process on a malformed argument list (and under AppTest, argv is pytest's)."""
    for i, arg in enumerate(argv):
        if arg == "--db" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--db="):
            return arg.split("=", 1)[1]
    return None


def default_url() -> str:
    return flag_url(sys.argv[1:]) or os.environ.get("NANORESEARCH_DB") or DEFAULT_URL


def current_url() -> str:
    return (st.session_state.get(URL_KEY) or "").strip() or default_url()


def missing_file(url: str) -> Path | None:
    """The path of a SQLite database that does not exist yet (None for anything else). Raises
    LeaderboardError for a malformed URL."""
    parsed = resolve_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database).absolute()
    return None if path.exists() else path


@st.cache_resource(ttl=60, show_spinner=False)
def _open(url: str) -> Store | None:
    store = Store(url, read_only=True, connect_timeout=CONNECT_TIMEOUT_S)
    if store.schema_version == 0:  # a database without our tables yet: nothing to show
        store.close()
        return None
    return store


def open_store(url: str) -> Store | None:
    """The read-only store at `url`, or None while it holds nothing (no file yet, no tables yet)."""
    if missing_file(url) is not None:
        return None
    return _open(url)


_CACHED: list[Any] = []  # our cached queries, so Refresh drops only these (other pages keep their caches)


def _cached(function):
    cached = st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)(function)
    _CACHED.append(cached)
    return cached


@_cached
def counts(url: str) -> dict[str, int]:
    store = open_store(url)
    return store.counts() if store else {}


@_cached
def tracks(url: str) -> list[dict[str, Any]]:
    store = open_store(url)
    return store.tracks() if store else []


@_cached
def leaderboard(url: str, track: str) -> list[dict[str, Any]]:
    store = open_store(url)
    return store.leaderboard(track) if store else []


@_cached
def searches(url: str) -> list[dict[str, Any]]:
    store = open_store(url)
    return store.searches() if store else []


@_cached
def search_summary(url: str, search_id: int) -> dict[str, Any] | None:
    store = open_store(url)
    return views.search_summary(store, search_id) if store else None


@_cached
def experiments(url: str, search_id: int | None = None) -> list[dict[str, Any]]:
    store = open_store(url)
    return store.experiments(search_id=search_id) if store else []


@_cached
def experiment_names(url: str) -> dict[str, str]:
    return {x["id"]: x["name"] for x in experiments(url)}


@_cached
def experiment(url: str, experiment_id: str) -> dict[str, Any] | None:
    store = open_store(url)
    return store.experiment(experiment_id) if store else None


@_cached
def decisions(url: str, search_id: int | None = None, experiment_id: str | None = None) -> list[dict[str, Any]]:
    store = open_store(url)
    return store.decisions(search_id=search_id, experiment_id=experiment_id) if store else []


@_cached
def runs(url: str, search_id: int | None = None, experiment_id: str | None = None, rung: str | None = None,
         statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    store = open_store(url)
    if not store:
        return []
    return store.runs(search_id=search_id, experiment_id=experiment_id, rung=rung,
                      status=list(statuses) if statuses else None)


@_cached
def hypotheses(url: str, search_id: int | None = None, tier: str | None = None,
               space: str | None = None) -> list[dict[str, Any]]:
    store = open_store(url)
    return store.hypotheses(search_id=search_id, tier=tier, space=space) if store else []


@_cached
def insights(url: str, tier: str, space: str) -> list[dict[str, Any]]:
    """Every insight of a tier and space, whatever its status (active, retired, superseded), oldest first."""
    store = open_store(url)
    return store.insights(tier, space, status=None) if store else []


def save_notes(url: str, experiment_id: str, notes: str, tags: list[str]) -> None:
    """A write: an experiment's notes and tags, through a store opened for writing for this alone and closed at
    once (every read above stays on the read-only store). Cached reads are dropped after."""
    with Store(url) as store:
        store.annotate_experiment(experiment_id, notes.strip() or None, tags)
    clear_cache()


def edit_insight(url: str, insight_id: int, text: str | None = None, retire: bool = False) -> None:
    """A write, as `save_notes`: an insight's new text (it becomes the user's) or its retirement."""
    with Store(url) as store:
        store.edit_insight(insight_id, text=text, retire=retire)
    clear_cache()


def running_runs(url: str, search_id: int) -> list[dict[str, Any]]:
    """The search's runs recorded as running, with their live progress: read fresh every time (not cached), for
    the view that refreshes itself."""
    store = open_store(url)
    return store.runs(search_id=search_id, status="running") if store else []


@_cached
def optuna_trials(url: str, study_name: str) -> list[dict[str, Any]]:
    store = open_store(url)
    return store.optuna_trials(study_name) if store else []


@_cached
def search_export(url: str, name: str) -> tuple[str, str] | None:
    """The search's results.tsv and report.md (leaderboard/search_export.py), as `python -m leaderboard export`
    writes them."""
    from leaderboard.search_export import SearchExport, report_card, results_tsv
    store = open_store(url)
    if store is None or store.find_search(name) is None:
        return None
    export = SearchExport(store, name)
    return results_tsv(export), report_card(export)


@_cached
def device_seconds(url: str, search_id: int) -> dict[int, float]:
    store = open_store(url)
    return store.device_seconds(search_id) if store else {}


@_cached
def run(url: str, run_id: int) -> dict[str, Any] | None:
    store = open_store(url)
    return store.run(run_id) if store else None


@_cached
def null_spreads(url: str, scope: str) -> list[dict[str, Any]]:
    store = open_store(url)
    return store.null_spreads(scope) if store else []


@_cached
def metric_points(url: str, run_ids: tuple[int, ...]) -> list[dict[str, Any]]:
    store = open_store(url)
    return store.metric_points(run_ids) if store else []


def clear_cache() -> None:
    for cached in _CACHED:
        cached.clear()
    _open.clear()


def empty_state(url: str, message: str) -> None:
    """The page's friendly 'nothing here yet', naming the missing file when that is why."""
    path = missing_file(url)
    if path is not None:
        st.info(f"No database at `{path}` yet: it is created by the first recorded run "
                "(`python -m harness.search`, or `python -m leaderboard ingest RUN_DIR`).")
    elif open_store(url) is None:
        st.info("The database has no leaderboard tables yet: nothing has been recorded in it.")
    else:
        st.info(message)


def sidebar() -> str:
    """The database picker and refresh button; returns the URL to read."""
    with st.sidebar:
        st.text_input("Database URL", value=default_url(), key=URL_KEY,
                      help="sqlite:///PATH or postgresql://USER@HOST:PORT/DB (default: --db, else "
                           "$NANORESEARCH_DB, else sqlite:///nanoresearch.db). Opened read-only.")
        if st.button("Refresh", help=f"Re-read the database now (reads are cached for {CACHE_TTL_S} s)"):
            clear_cache()
    return current_url()


def sidebar_status(url: str) -> None:
    """A one-line summary of what the database holds, under the picker."""
    found = counts(url)
    if not found:
        st.sidebar.caption("Empty: nothing recorded yet.")
        return
    st.sidebar.caption(" · ".join(f"{table}: {found.get(table, 0):,}"
                                  for table in ("searches", "experiments", "runs", "entries")))
