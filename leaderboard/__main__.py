"""`python -m leaderboard`: serve the dashboard (`serve`), export a search (`export`), record run dirs (`ingest`),
measure the store (`bench`).

    python -m leaderboard serve [--db URL] [--port 8501] [--host 127.0.0.1]
    python -m leaderboard export SEARCH [--db URL] [--out DIR]     # DIR/results.tsv and DIR/report.md
    python -m leaderboard ingest runs/d2-smear runs/d2-base [--db URL]
    python -m leaderboard bench [--db URL] [--runs 10000 --points 1000000]

`serve` works from any directory and binds to 127.0.0.1 unless --host says otherwise: the dashboard has no login.

--db defaults to $NANORESEARCH_DB, else sqlite:///nanoresearch.db in the working directory.
Exit code 2 with a one-line `error: ...` on stderr for anything the user can fix; `ingest` still
records every good dir given alongside a bad one.
"""

import argparse
import os
import re
import sys
from pathlib import Path

from leaderboard.bench import run_bench
from leaderboard.errors import LeaderboardError
from leaderboard.ingest import ingest_run_dir
from leaderboard.progress import Progress
from leaderboard.search_export import export_search
from leaderboard.store import Store


def _ingest(args: argparse.Namespace) -> int:
    failures = 0
    with Store(args.db) as store:
        progress = Progress(len(args.run_dirs), "ingest")
        for i, path in enumerate(args.run_dirs):
            try:
                parsed, recorded = ingest_run_dir(store, path)
            except LeaderboardError as e:
                print(f"error: {e}", file=sys.stderr)
                failures += 1
            else:
                run = parsed.run
                print(f"{recorded.action} {path}: run {recorded.run_id} (experiment {run.experiment_id}, "
                      f"rung {run.rung}, seed {run.seed}, {run.status})")
            progress.update(i + 1)
        progress.close()
    return 2 if failures else 0


def _export(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(f"{re.sub(r'[^A-Za-z0-9._-]+', '_', args.search)}-report")
    if out.exists() and not out.is_dir():
        raise LeaderboardError(f"--out {out}: a file is there; expected a directory (it is created if missing)")
    with Store(args.db) as store:
        try:
            written = export_search(store, args.search, out)
        except OSError as e:
            raise LeaderboardError(f"--out {out}: {e.strerror or e}; expected a writable directory") from None
    for path in written:
        print(f"wrote {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    run_bench(args.db, args.runs, args.points, sys.stdout)
    return 0


APP = Path(__file__).resolve().parent / "app.py"


def serve_command(args: argparse.Namespace) -> list[str]:
    """The `streamlit run` command line for the dashboard. Every setting the repo's .streamlit/config.toml holds is
    passed as a flag, because Streamlit reads that file from the working directory only."""
    command = [sys.executable, "-m", "streamlit", "run", str(APP),
               "--server.address", args.host, "--server.port", str(args.port),
               "--server.headless", "true",              # print the URL; never prompt or open a browser by itself
               "--server.runOnSave", "false", "--server.fileWatcherType", "none",
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]
    if args.db:
        command += ["--", "--db", args.db]
    return command


def _serve(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise LeaderboardError(f"--port {args.port}: expected a TCP port, 1 to 65535")
    command = serve_command(args)
    where = "this machine only" if args.host in ("127.0.0.1", "localhost", "::1") else f"the network ({args.host})"
    print(f"dashboard: http://{args.host}:{args.port}/ (served to {where}; Ctrl-C stops it)", flush=True)
    # exec, not a child: Ctrl-C and kill reach Streamlit itself, and nothing is left running behind this command.
    os.execv(sys.executable, command)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leaderboard", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    db_help = "database URL (default: $NANORESEARCH_DB, else sqlite:///nanoresearch.db)"

    serve = commands.add_parser("serve", help="the dashboard, from any directory, on 127.0.0.1 unless --host says otherwise")
    serve.add_argument("--db", help=db_help)
    serve.add_argument("--port", type=int, default=8501)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; 0.0.0.0 serves it to the network, with no login)")
    serve.set_defaults(handler=_serve)

    export = commands.add_parser("export", help="a search's results.tsv and report.md (its report card)")
    export.add_argument("search", metavar="SEARCH", help="the search's name (as --name gave it, or printed at its start)")
    export.add_argument("--db", help=db_help)
    export.add_argument("--out", default=None, help="directory to write into (default: ./SEARCH-report)")
    export.set_defaults(handler=_export)

    ingest = commands.add_parser("ingest", help="record finished run dirs (idempotent)")
    ingest.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    ingest.add_argument("--db", help=db_help)
    ingest.set_defaults(handler=_ingest)

    bench = commands.add_parser("bench", help="insert rate and query times at search scale")
    bench.add_argument("--db", help="database URL; it must hold no runs (default: a throwaway SQLite file)")
    bench.add_argument("--runs", type=int, default=10_000)
    bench.add_argument("--points", type=int, default=1_000_000, help="metric points in all (spread over the runs)")
    bench.set_defaults(handler=_bench)

    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except LeaderboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
