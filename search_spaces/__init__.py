"""Declarative knobs a proposer may turn, and named spaces over them (architecture, optimizer, all)."""

from search_spaces.knobs import CATEGORIES, KINDS, KNOBS, SPACES, Knob, change_categories, change_kind
from search_spaces.space import SearchSpaceError, Space

__all__ = ["CATEGORIES", "KINDS", "change_categories", "KNOBS", "SPACES", "Knob", "change_kind", "Space", "SearchSpaceError"]
