"""What a call to the agent costs: Anthropic's list prices per model, in US dollars per million tokens.

The one place prices live. Sources: the model pages and the models overview of platform.claude.com (checked for
the models below). A model missing here gets no cost (None) and the agent proposer warns once; add a line here
rather than guessing. Prompt-cache tokens, when a response reports any, are priced as Anthropic bills them:
reads at 0.1x and (5-minute) writes at 1.25x the input price.
"""

from __future__ import annotations

import re

# model id -> (input, output) dollars per million tokens
PRICES: dict[str, tuple[float, float]] = {
    "claude-fable-5-2": (8.0, 40.0),
    "claude-fable-5-1": (10.0, 50.0),
    "claude-fable-5": (10.0, 50.0),
    "claude-opus-5-5": (4.0, 20.0),
    "claude-opus-5": (5.0, 25.0),
    "claude-sonnet-5-5": (2.0, 10.0),
    "claude-sonnet-5": (2.0, 10.0),
    # Haiku 5.5 is billed in two bands; this is the band of prompts up to 100k tokens (the agent's are far smaller).
    "claude-haiku-5-5": (0.10, 0.50),
    "claude-opus-4-7": (5.0, 25.0),
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
}
CACHE_READ = 0.1
CACHE_WRITE = 1.25


def canonical(model: str) -> str:
    """The price-table name of a model id: without a gateway's provider prefix ("anthropic/", "anthropic.") and
    without a snapshot date ("-20251001")."""
    name = model.strip().lower()
    for prefix in ("anthropic/", "anthropic."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return re.sub(r"-\d{8}$", "", name)


def price(model: str) -> tuple[float, float] | None:
    return PRICES.get(canonical(model))


def cost_usd(model: str, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0,
             cache_write_tokens: int = 0) -> float | None:
    """Dollars for one call, or None when the model's price is unknown."""
    found = price(model)
    if found is None:
        return None
    per_in, per_out = found
    return (input_tokens * per_in + cache_read_tokens * per_in * CACHE_READ + cache_write_tokens * per_in * CACHE_WRITE
            + output_tokens * per_out) / 1e6
