"""Experiment ids: a content hash of an experiment's canonical spec.

The same recipe (tweaks, depth, tier, budget, data, code version) gets the same id wherever and whenever
it is proposed, which is what makes a killed search resumable and lets many workers share one database.
"""

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def canonical_json(spec: Mapping[str, Any]) -> str:
    """Key order and whitespace never change the text; NaN is refused (it has no canonical JSON form)."""
    try:
        return json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"experiment spec is not canonical JSON ({e}): {spec!r}") from None


def experiment_id(spec: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of `spec`, first 12 hex digits (48 bits: collisions are not a concern
    at the scale of a search, and the id stays readable in logs and URLs)."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:12]
