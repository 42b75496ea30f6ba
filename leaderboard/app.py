"""The nanoresearch dashboard: `python -m leaderboard serve [--db URL]` (or `streamlit run leaderboard/app.py`).

Pages: Leaderboard (per track), Search (progress, funnel, decisions, agent spend), Runs (curves, config
diffs), Experiment (one recipe, its runs and decisions), Chat (the best checkpoint found so far) and Benchmark (the
search itself measured: the reports of harness.benchmark). The database comes from the sidebar, else --db, else
$NANORESEARCH_DB, else sqlite:///nanoresearch.db, and is only ever read.

`python -m leaderboard serve` binds to 127.0.0.1 from any directory (so does `streamlit run` from the repo root, by
`.streamlit/config.toml`): the dashboard has no login, so it is not served to the network unless asked for with
`--host 0.0.0.0`.
"""

import sys
from pathlib import Path

# `streamlit run` puts this file's directory on sys.path, not the repository root: make `leaderboard`
# importable from a plain checkout too (and prefer this checkout over another installed copy).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from leaderboard import dashboard_db  # noqa: E402
from leaderboard.errors import LeaderboardError  # noqa: E402

# Each page is a script beside this file (dashboard_<page>.py). Not a `pages/` directory: Streamlit would
# also treat that as an old-style multipage app and run its scripts without this entry point's sidebar.
# url_path values are part of the contract: links between pages (e.g. experiment?id=...) use them.
HERE = Path(__file__).resolve().parent
PAGES = [
    st.Page(HERE / "dashboard_leaderboard.py", title="Leaderboard", icon=":material/trophy:", default=True),
    st.Page(HERE / "dashboard_search.py", title="Search", icon=":material/travel_explore:", url_path="search"),
    st.Page(HERE / "dashboard_runs.py", title="Runs", icon=":material/show_chart:", url_path="runs"),
    st.Page(HERE / "dashboard_experiment.py", title="Experiment", icon=":material/science:", url_path="experiment"),
    st.Page(HERE / "dashboard_chat.py", title="Chat", icon=":material/chat:", url_path="chat"),
    st.Page(HERE / "dashboard_benchmark.py", title="Benchmark", icon=":material/speed:", url_path="benchmark"),
]

st.set_page_config(page_title="nanoresearch", page_icon=":material/trophy:", layout="wide")
page = st.navigation(PAGES)
url = dashboard_db.sidebar()
try:
    dashboard_db.sidebar_status(url)
    page.run()
except LeaderboardError as e:
    # A wrong URL, an unreachable server, a database from a newer nanoresearch: one line, no traceback.
    st.error(f"Cannot read the database: {e}")
