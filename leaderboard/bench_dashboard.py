"""`python -m leaderboard.bench_dashboard`: how fast the dashboard's pages render at search scale.

Fills a database the way `python -m leaderboard bench` does (10,000 runs with 1,000,000 metric points,
2,500 decisions, 1,000 leaderboard entries by default), then renders the Leaderboard and Search pages
(and, for information, Runs and Experiment) with Streamlit's AppTest and prints each render's time:
first in the process (imports included), cold (query caches empty: a visitor after the cache expired)
and warm (cached queries: every interaction after that). The goal: cold renders under LIMIT_S on the
Leaderboard and Search pages.

    python -m leaderboard.bench_dashboard                     # throwaway SQLite file
    python -m leaderboard.bench_dashboard --db sqlite:///b.db # reuse: filled on the first call only
"""

import argparse
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from leaderboard.bench import bench
from leaderboard.errors import LeaderboardError
from leaderboard.store import Store

APP = Path(__file__).resolve().parent / "app.py"
LIMIT_S = 3.0
TIMED_PAGES = ("leaderboard", "search")


def _fill(url: str, n_runs: int, n_points: int) -> None:
    """The bench data in `url`, unless a previous call put it there already."""
    with Store(url) as store:
        if store.find_search("bench") is not None:
            return
        print(f"filling {url} with {n_runs} runs and {n_points} metric points", file=sys.stderr)
        bench(store, n_runs, n_points, io.StringIO())  # its insert/query report is `python -m leaderboard bench`'s


class _Renderer:
    """One simulated browser session on the app (AppTest), rendering pages on request."""

    def __init__(self, url: str):
        from streamlit.testing.v1 import AppTest

        os.environ["NANORESEARCH_DB"] = url
        start = time.perf_counter()
        self.app = AppTest.from_file(APP, default_timeout=600).run()  # the default page: the Leaderboard
        self.first_s = time.perf_counter() - start

    def render(self, page: str, query: dict[str, str], *, cold: bool) -> float:
        from leaderboard import dashboard_db

        if cold:
            dashboard_db.clear_cache()
        self.app.query_params.clear()
        self.app.query_params.update(query)
        self.app.switch_page(f"dashboard_{page}.py")
        start = time.perf_counter()
        self.app.run()
        elapsed = time.perf_counter() - start
        problems = [e.value for e in self.app.exception] + [e.value for e in self.app.error]
        if problems:
            raise LeaderboardError(f"page {page} failed to render: {problems[0].splitlines()[0]}")
        return elapsed


def run_bench(url: str | None, n_runs: int, n_points: int, repeats: int, out: TextIO) -> dict[str, tuple[float, float]]:
    if n_runs < 1 or n_points < 0 or repeats < 0:
        raise LeaderboardError(f"--runs {n_runs} --points {n_points} --repeats {repeats}: expected runs >= 1, "
                               "points >= 0 and repeats >= 0")
    with tempfile.TemporaryDirectory(prefix="nanoresearch-bench-dashboard-") as tmp:
        url = url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        start = time.perf_counter()
        _fill(url, n_runs, n_points)
        with Store(url, read_only=True) as store:
            counts = store.counts()
            search_id = store.find_search("bench")["id"]
            some_experiment = store.experiments(search_id=search_id)[0]["id"]
        print(f"database: {url} ({counts['runs']} runs, {counts['metric_points']} metric points, "
              f"{counts['decisions']} decisions, {counts['entries']} entries; ready in "
              f"{time.perf_counter() - start:.1f} s)", file=out)
        pages = {"leaderboard": {"track": "bench"}, "search": {"search": "bench"},
                 "runs": {"search": "bench"}, "experiment": {"id": some_experiment}}
        logging.disable(logging.WARNING)  # AppTest's "no runtime found" notices, one per cached function
        try:
            return _render_pages(url, pages, repeats, out)
        finally:
            logging.disable(logging.NOTSET)


def _render_pages(url: str, pages: dict[str, dict[str, str]], repeats: int, out: TextIO) -> dict[str, tuple[float, float]]:
    renderer = _Renderer(url)
    # First renders in this process also import the pages' libraries (altair, ...) once, as a server
    # does for its first visitor; "cold" is every later visitor after the query caches expired.
    first = {"leaderboard": renderer.first_s}
    first |= {page: renderer.render(page, query, cold=True) for page, query in pages.items() if page not in first}
    results = {}
    for page, query in pages.items():
        cold = renderer.render(page, query, cold=True)
        warm = min((renderer.render(page, query, cold=False) for _ in range(repeats)), default=cold)
        results[page] = (cold, warm)
        verdict = (f"limit {LIMIT_S:.0f} s: {'ok' if cold < LIMIT_S else 'EXCEEDED'}" if page in TIMED_PAGES
                   else "no limit")
        print(f"render {page}: first in process {first[page]:.2f} s, cold (empty caches) {cold:.2f} s, "
              f"warm (cached) best of {repeats} {warm:.2f} s ({verdict})", file=out, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leaderboard.bench_dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL to fill once and reuse (default: a throwaway SQLite file)")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=1_000_000, help="metric points in all (spread over the runs)")
    parser.add_argument("--repeats", type=int, default=3, help="warm renders per page after the cold one")
    args = parser.parse_args(argv)
    try:
        results = run_bench(args.db, args.runs, args.points, args.repeats, sys.stdout)
    except LeaderboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if all(results[page][0] < LIMIT_S for page in TIMED_PAGES) else 1


if __name__ == "__main__":
    sys.exit(main())
