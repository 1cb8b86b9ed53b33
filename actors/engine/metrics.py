"""The run's figures as Prometheus metrics on Ray's metrics endpoint, updated as the run goes.

The driver's watch loop already receives the pool's figures (`Pool.watch`, at most every 0.5 s)
and the gate's (`Gate.stats`, at most every 2 s); `RunMetrics` turns each pair into counter
increments and gauge values. Nothing is recorded on a worker's, the pool's or the gate's path.
Pure: it is handed the metric classes (`ray.util.metrics.Counter` and `Gauge` in the driver,
recorders in the tests), so it is tested without Ray.

Ray's exporter prefixes every name with `ray_` and a counter's with the suffix `_total`:
`selfinstruct_tasks_written` is `ray_selfinstruct_tasks_written_total` on the endpoint.

Counters count what this driver saw happen: a resumed run starts them from the figures committed
before it, so the sum over a run's drivers is the run's total, as in run.json. A figure that goes
down (a pool restarted from the run directory forgets what it had not committed; a restarted
gate forgets its counts) adds nothing until it passes its earlier high, so nothing is counted
twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

COUNTER, GAUGE = "counter", "gauge"
TOKEN_KINDS = ("prompt", "completion", "cache_read", "cache_write")


@dataclass(frozen=True)
class Spec:
    kind: str
    tags: tuple[str, ...]
    description: str


SPECS: dict[str, Spec] = {
    "selfinstruct_tasks_written": Spec(COUNTER, (), "tasks appended to dataset.jsonl"),
    "selfinstruct_candidates": Spec(
        COUNTER, ("stage", "decision"), "items each stage decided, accepted or rejected "
        "(run.json counts)"),
    "selfinstruct_rejections": Spec(
        COUNTER, ("stage", "rule"), "rejections by stage and rule (run.json counts.*.reasons)"),
    "selfinstruct_requests": Spec(
        COUNTER, ("stage", "model"), "model answers recorded, cache hits included"),
    "selfinstruct_cache_hits": Spec(
        COUNTER, ("stage", "model"), "answers taken from the cache, not asked"),
    "selfinstruct_request_errors": Spec(
        COUNTER, ("stage", "model"), "requests that failed after every retry"),
    "selfinstruct_tokens": Spec(
        COUNTER, ("stage", "model", "kind"), "tokens by kind: " + ", ".join(TOKEN_KINDS)),
    "selfinstruct_cost_usd": Spec(
        COUNTER, ("stage", "model"), "what the recorded answers cost, in US dollars"),
    "selfinstruct_faults": Spec(
        COUNTER, ("model", "kind"), "faults the gate heard of, by kind: failed HTTP attempts, "
        "retried or not (http_429, http_500, timeout, ...), and failed batch items (batch_*); "
        "model is the key under models:"),
    "selfinstruct_requests_in_flight": Spec(
        GAUGE, ("model",), "API requests granted by the gate and not yet settled"),
    "selfinstruct_rate_factor": Spec(
        GAUGE, ("model",), "share of the model's limits in use after 429 back-off (1: all)"),
    "selfinstruct_pool_size": Spec(
        GAUGE, (), "instructions in the ROUGE-L pool: the seeds and the kept candidates"),
    "selfinstruct_queue_depth": Spec(
        GAUGE, ("stage",), "work waiting for a stage: candidates for dedup, tasks for classify "
        "and instances"),
}

Key = tuple[str, tuple[str, ...]]  # metric name, tag values in the order of its Spec's tags


def counter_values(pool: dict[str, Any], gate: dict[str, Any]) -> dict[Key, float]:
    """Every counter's running total in the pool's figures (`Pool.watch`, `Pool.finish`) and
    the gate's (`Gate.stats`); either may be empty."""
    out: dict[Key, float] = {("selfinstruct_tasks_written", ()): pool.get("tasks", 0)}
    for stage, s in pool.get("stages", {}).items():
        for decision in ("accepted", "rejected"):
            out["selfinstruct_candidates", (stage, decision)] = s[decision]
        for rule, n in s["reasons"].items():
            out["selfinstruct_rejections", (stage, rule)] = n
    for key, u in pool.get("usage", {}).items():
        stage, _, model = key.partition(":")
        for name, field in (("requests", "requests"), ("cache_hits", "cache_hits"),
                            ("request_errors", "errors"), ("cost_usd", "cost_usd")):
            out[f"selfinstruct_{name}", (stage, model)] = u.get(field, 0)
        for kind in TOKEN_KINDS:
            out["selfinstruct_tokens", (stage, model, kind)] = u.get(f"{kind}_tokens", 0)
    for model, m in gate.get("models", {}).items():
        for kind, n in m["faults"].items():
            out["selfinstruct_faults", (model, kind)] = n
    return out


def gauge_values(pool: dict[str, Any], gate: dict[str, Any]) -> dict[Key, float]:
    """Every gauge's value now, from the same figures."""
    out: dict[Key, float] = {}
    if "pool_size" in pool:
        out["selfinstruct_pool_size", ()] = pool["pool_size"]
    for stage, n in pool.get("waiting", {}).items():
        out["selfinstruct_queue_depth", (stage,)] = n
    for model, m in gate.get("models", {}).items():
        out["selfinstruct_requests_in_flight", (model,)] = m["in_flight"]
        out["selfinstruct_rate_factor", (model,)] = m["rate_factor"]
    return out


class RunMetrics:
    """The run's metrics, fed the pool's and the gate's figures whenever the driver has them.

    `counter` and `gauge` make a metric as `ray.util.metrics.Counter(name, description=...,
    tag_keys=...)` does; `before` is what the run directory held when this driver started
    (pool figures: tasks, stages, usage), which its counters do not count again."""

    def __init__(self, counter: Callable[..., Any], gauge: Callable[..., Any],
                 before: dict[str, Any]) -> None:
        self.metrics = {name: (counter if spec.kind == COUNTER else gauge)(
                            name, description=spec.description, tag_keys=spec.tags)
                        for name, spec in SPECS.items()}
        self.high = counter_values(before, {})

    def update(self, pool: dict[str, Any], gate: dict[str, Any]) -> None:
        for key, value in counter_values(pool, gate).items():
            step = value - self.high.get(key, 0)
            if step > 0:
                self.high[key] = value
                self.metrics[key[0]].inc(step, tags=self._tags(key))
        for key, value in gauge_values(pool, gate).items():
            self.metrics[key[0]].set(value, tags=self._tags(key))

    @staticmethod
    def _tags(key: Key) -> dict[str, str]:
        name, values = key
        return dict(zip(SPECS[name].tags, values, strict=True))
