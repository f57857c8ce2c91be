"""Dollar prices of LLM tokens, per model, for the automated researchers' budgets.

Prices are US dollars per million tokens: ``input`` (uncached prompt), ``output``,
``cache_read`` and ``cache_write`` (prompt-cache hits and writes, where the API reports
them). A model name matches the longest table key it starts with (``claude-sonnet-4-5-2025...``
matches ``claude-sonnet-4-5``). Override or extend the table with a JSON file named by
``$W2SLAB_PRICES`` (or the researcher config's ``prices_file``)::

    {"my-model": {"input": 0.5, "output": 1.5}, "claude-sonnet-4-5": {"input": 3, "output": 15}}

Models behind a local server (a loopback or private ``base_url``: vLLM, ollama, llama.cpp)
cost nothing unless the table names them. Any other model not in the table is priced at
:data:`UNKNOWN_PRICE` (deliberately expensive) so that a dollar budget still stops it.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0) -> float:
        read = self.input * 0.1 if self.cache_read is None else self.cache_read
        write = self.input * 1.25 if self.cache_write is None else self.cache_write
        return (input_tokens * self.input + output_tokens * self.output + cache_read * read + cache_write * write) / 1e6


FREE = Price(0.0, 0.0, 0.0, 0.0)
UNKNOWN_PRICE = Price(15.0, 75.0)

# $ per million tokens, list prices (update here or override with $W2SLAB_PRICES).
PRICES: dict[str, Price] = {
    "claude-opus-4-5": Price(5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-1": Price(15.0, 75.0, 1.5, 18.75),
    "claude-opus-4": Price(15.0, 75.0, 1.5, 18.75),
    "claude-sonnet-4": Price(3.0, 15.0, 0.3, 3.75),
    "claude-3-7-sonnet": Price(3.0, 15.0, 0.3, 3.75),
    "claude-3-5-sonnet": Price(3.0, 15.0, 0.3, 3.75),
    "claude-haiku-4-5": Price(1.0, 5.0, 0.1, 1.25),
    "claude-3-5-haiku": Price(0.8, 4.0, 0.08, 1.0),
    "claude-3-haiku": Price(0.25, 1.25, 0.03, 0.3),
    "gpt-5-nano": Price(0.05, 0.4, 0.005, 0.05),
    "gpt-5-mini": Price(0.25, 2.0, 0.025, 0.25),
    "gpt-5": Price(1.25, 10.0, 0.125, 1.25),
    "gpt-4.1-nano": Price(0.1, 0.4, 0.025, 0.1),
    "gpt-4.1-mini": Price(0.4, 1.6, 0.1, 0.4),
    "gpt-4.1": Price(2.0, 8.0, 0.5, 2.0),
    "gpt-4o-mini": Price(0.15, 0.6, 0.075, 0.15),
    "gpt-4o": Price(2.5, 10.0, 1.25, 2.5),
    "o4-mini": Price(1.1, 4.4, 0.275, 1.1),
    "o3-mini": Price(1.1, 4.4, 0.55, 1.1),
    "o3": Price(2.0, 8.0, 0.5, 2.0),
}

# Context windows (tokens) for the summarisation threshold; others default per backend.
CONTEXT_WINDOWS: dict[str, int] = {
    "claude": 200_000, "gpt-5": 400_000, "gpt-4.1": 1_000_000, "gpt-4o": 128_000, "o3": 200_000, "o4": 200_000,
}


def _parse(entry: Any) -> Price:
    if isinstance(entry, (int, float)):
        return Price(float(entry), float(entry))
    if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
        raise ValueError(f"a price needs 'input' and 'output' ($ per million tokens), got {entry!r}")
    return Price(float(entry["input"]), float(entry["output"]),
                 None if entry.get("cache_read") is None else float(entry["cache_read"]),
                 None if entry.get("cache_write") is None else float(entry["cache_write"]))


def load_prices(path: str | Path | None = None) -> dict[str, Price]:
    """The built-in table updated by the JSON file at ``path`` or ``$W2SLAB_PRICES``."""
    table = dict(PRICES)
    path = path or os.environ.get("W2SLAB_PRICES")
    if path:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of model -> price")
        table.update({str(k): _parse(v) for k, v in data.items()})
    return table


def is_local(base_url: str | None) -> bool:
    """A base URL on this machine or a private network (a self-hosted server)."""
    if not base_url:
        return False
    host = (urlparse(base_url).hostname or "").lower()
    if host in ("localhost", "host.docker.internal") or host.endswith((".local", ".localhost", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_unspecified


def _longest_prefix(model: str, table: dict[str, Any]) -> Any:
    name = model.lower().split("/")[-1]  # "openai/gpt-4o" or "anthropic/claude-..." style names
    keys = [k for k in table if name.startswith(k.lower()) or model.lower() == k.lower()]
    return table[max(keys, key=len)] if keys else None


def price_for(model: str, base_url: str | None = None, table: dict[str, Price] | None = None) -> tuple[Price, str]:
    """(price, where it came from: 'table', 'local' or 'unknown')."""
    table = PRICES if table is None else table
    if model in table:
        return table[model], "table"
    found = _longest_prefix(model, table)
    if found is not None:
        return found, "table"
    if is_local(base_url):
        return FREE, "local"
    return UNKNOWN_PRICE, "unknown"


def context_window(model: str, default: int) -> int:
    found = _longest_prefix(model, CONTEXT_WINDOWS)
    return int(found) if found else default
