"""Declarative knobs a proposer may turn, and named spaces over them (architecture, optimizer, all)."""

from search_spaces.knobs import KNOBS, SPACES, Knob
from search_spaces.space import SearchSpaceError, Space

__all__ = ["KNOBS", "SPACES", "Knob", "Space", "SearchSpaceError"]
