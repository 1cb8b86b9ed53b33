"""Usage and cost totals for run.json, from the writer's per-"stage:model" sums."""

from __future__ import annotations

from typing import Any

from actors.config import Price
from actors.engine.limits import cache_saving_usd
from actors.rundir.runlog import add_counts

# What each response record carries and the writer sums per "stage:model".
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens",
              "cost_usd", "batch_saved_usd")
SUMMED = ("requests", "errors", "batch_requests", *USAGE_KEYS)


def summarize(usage: dict[str, dict[str, Any]], prices: dict[str, Price]) -> dict[str, Any]:
    """Totals per stage, per model and overall; faults by kind; what prompt caching saved.

    `usage` is keyed "stage:model label"; `prices` by model label (API models only).
    """
    by_stage: dict[str, dict[str, Any]] = {}
    by_model: dict[str, dict[str, Any]] = {}
    total: dict[str, Any] = {}
    faults: dict[str, int] = {}
    saved = 0.0
    for key, u in usage.items():
        stage, _, model = key.partition(":")
        part = {k: u.get(k, 0) for k in SUMMED}
        for into in (by_stage.setdefault(stage, {}), by_model.setdefault(model, {}), total):
            add_counts(into, part)
        add_counts(faults, u.get("faults", {}))
        if model in prices:
            saved += cache_saving_usd(prices[model], u.get("cache_read_tokens", 0),
                                      u.get("cache_write_tokens", 0))
    for part in (*by_stage.values(), *by_model.values(), total):
        for key in ("cost_usd", "batch_saved_usd"):
            part[key] = round(part.get(key, 0.0), 6)
    return {"totals": {"all": total, "by_stage": by_stage, "by_model": by_model},
            "faults": faults,
            "prompt_cache": {"read_tokens": total.get("cache_read_tokens", 0),
                             "write_tokens": total.get("cache_write_tokens", 0),
                             "saved_usd": round(saved, 6)}}


def spent_usd(usage: dict[str, dict[str, Any]]) -> float:
    return sum(u.get("cost_usd", 0.0) for u in usage.values())


def saved_usd(usage: dict[str, dict[str, Any]]) -> float:
    """What provider batches saved against the online price."""
    return sum(u.get("batch_saved_usd", 0.0) for u in usage.values())
