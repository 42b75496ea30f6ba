"""The one exception type the leaderboard raises for anything a user can fix (CLIs print it as one line)."""


class LeaderboardError(Exception):
    """Bad input or an unusable database: the message is one line naming the bad value and what was expected."""


class SchemaError(LeaderboardError):
    """The database's schema version is one this code cannot use (written by a newer nanoresearch)."""
