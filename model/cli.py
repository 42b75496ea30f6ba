"""Command-line conventions shared by the `python -m model.*` entry points."""

from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (`error: ...`) and exit code 2, like every other bad
    input in this project; `--help` still prints the full usage."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        sys.exit(2)
