"""The leaderboard: every run, proposal, promotion decision and speedrun entry, in one database.

SQLite by default (`nanoresearch.db`), PostgreSQL by URL (NANORESEARCH_DB or --db). Imports nothing
else of ours (but `leaderboard.ingest`, which reads run dirs through the torch-free `model.run_dir`), so any tool
can read and write it. Start at `leaderboard.store.Store`.
"""

from leaderboard.errors import LeaderboardError, SchemaError
from leaderboard.identity import experiment_id
from leaderboard.records import Decision, Entry, Experiment, RejectedProposal, Run, Track
from leaderboard.store import Recorded, Store

__all__ = ["Decision", "Entry", "Experiment", "LeaderboardError", "Recorded", "RejectedProposal", "Run", "SchemaError",
           "Store", "Track", "experiment_id"]
