"""RunMetrics without Ray: successive pool and gate figures become counter increments that add
up to the latest figures, and gauges that hold the latest values; a resumed run does not count
again what was committed before it, and a figure that drops (a restarted pool or gate) is not
counted twice. The export port is a key for a new local Ray only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from actors.config import ConfigError, parse_config
from actors.engine.metrics import SPECS, RunMetrics


class Recorder:
    """A metric as ray.util.metrics makes it, with Ray's checks: every tag key given, string
    values, a counter only ever incremented by a positive amount."""

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] = ()) -> None:
        self.name, self.tag_keys, self.values = name, tag_keys, {}
        assert description

    def _key(self, tags: dict[str, str] | None) -> tuple[str, ...]:
        tags = tags or {}
        assert set(tags) == set(self.tag_keys), (self.name, tags)
        assert all(isinstance(v, str) for v in tags.values())
        return tuple(tags[k] for k in self.tag_keys)


class Counter(Recorder):
    def inc(self, value: float, tags: dict[str, str] | None = None) -> None:
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        key = self._key(tags)
        self.values[key] = self.values.get(key, 0) + value


class Gauge(Recorder):
    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.values[self._key(tags)] = value


def stage(accepted: int, reasons: dict[str, int] | None = None) -> dict[str, Any]:
    reasons = reasons or {}
    rejected = sum(reasons.values())
    return {"in": accepted + rejected, "accepted": accepted, "rejected": rejected,
            "reasons": reasons}


def pool(tasks: int, filter_rules: dict[str, int], requests: int, cost: float,
         waiting: int = 0) -> dict[str, Any]:
    """Pool figures as Pool.watch returns them."""
    return {"tasks": tasks, "finished": tasks, "target": 100,
            "stages": {"filter": stage(tasks * 2, filter_rules),
                       "task": stage(tasks)},
            "usage": {"propose:fake-oai": {"requests": requests, "cache_hits": 1, "errors": 0,
                                           "prompt_tokens": 100 * requests,
                                           "completion_tokens": 10 * requests,
                                           "cost_usd": cost, "faults": {}}},
            "pool_size": 175 + tasks, "waiting": {"dedup": waiting, "classify": 2,
                                                  "instances": 0}}


def gate(in_flight: int, factor: float, faults: dict[str, int]) -> dict[str, Any]:
    """Gate figures as Gate.stats returns them (only what the metrics read, and some more)."""
    return {"models": {"oai": {"in_flight": in_flight, "rate_factor": factor, "requests": 9,
                               "faults": faults}},
            "budget_exhausted": False, "dead": {}, "faults": faults}


def values(metrics: RunMetrics, name: str) -> dict[tuple[str, ...], float]:
    return metrics.metrics[name].values


def fresh() -> RunMetrics:
    return RunMetrics(Counter, Gauge, {})


def test_counters_add_up_to_the_latest_figures_and_gauges_hold_the_latest_values():
    m = fresh()
    m.update(pool(1, {"word_count": 2}, 3, 0.01, waiting=7), gate(4, 0.5, {"http_429": 1}))
    m.update(pool(1, {"word_count": 2}, 3, 0.01, waiting=7), {})  # nothing new, no gate look
    m.update(pool(5, {"word_count": 3, "keywords": 1}, 11, 0.035, waiting=0),
             gate(1, 1.0, {"http_429": 2, "timeout": 1}))
    assert values(m, "selfinstruct_tasks_written") == {(): 5}
    assert values(m, "selfinstruct_candidates") == {
        ("filter", "accepted"): 10, ("filter", "rejected"): 4, ("task", "accepted"): 5}
    assert values(m, "selfinstruct_rejections") == {("filter", "word_count"): 3,
                                                    ("filter", "keywords"): 1}
    assert values(m, "selfinstruct_requests") == {("propose", "fake-oai"): 11}
    assert values(m, "selfinstruct_cache_hits") == {("propose", "fake-oai"): 1}
    assert values(m, "selfinstruct_tokens") == {("propose", "fake-oai", "prompt"): 1100,
                                                ("propose", "fake-oai", "completion"): 110}
    assert values(m, "selfinstruct_cost_usd")["propose", "fake-oai"] == pytest.approx(0.035)
    assert values(m, "selfinstruct_faults") == {("oai", "http_429"): 2, ("oai", "timeout"): 1}
    assert values(m, "selfinstruct_requests_in_flight") == {("oai",): 1}
    assert values(m, "selfinstruct_rate_factor") == {("oai",): 1.0}
    assert values(m, "selfinstruct_pool_size") == {(): 180}
    assert values(m, "selfinstruct_queue_depth") == {("dedup",): 0, ("classify",): 2,
                                                     ("instances",): 0}


def test_a_resumed_run_counts_only_what_happens_after_its_start():
    before = pool(4, {"word_count": 2}, 8, 0.02)
    m = RunMetrics(Counter, Gauge, before)
    m.update(before, {})
    assert values(m, "selfinstruct_tasks_written") == {}
    m.update(pool(6, {"word_count": 2, "keywords": 3}, 12, 0.03), {})
    assert values(m, "selfinstruct_tasks_written") == {(): 2}
    assert values(m, "selfinstruct_rejections") == {("filter", "keywords"): 3}
    assert values(m, "selfinstruct_requests") == {("propose", "fake-oai"): 4}


def test_a_figure_that_drops_is_not_counted_again_until_it_passes_its_high():
    m = fresh()
    m.update(pool(10, {}, 20, 0.1), gate(0, 1.0, {"http_500": 4}))
    # The pool restarted from the run directory (uncommitted work is redone) and so did the
    # gate (its counts start again from zero).
    m.update(pool(8, {}, 17, 0.08), gate(0, 1.0, {"http_500": 1}))
    m.update(pool(9, {}, 19, 0.09), gate(0, 1.0, {"http_500": 3}))
    assert values(m, "selfinstruct_tasks_written") == {(): 10}
    assert values(m, "selfinstruct_faults") == {("oai", "http_500"): 4}
    m.update(pool(12, {}, 23, 0.12), gate(0, 1.0, {"http_500": 6}))
    assert values(m, "selfinstruct_tasks_written") == {(): 12}
    assert values(m, "selfinstruct_requests") == {("propose", "fake-oai"): 23}
    assert values(m, "selfinstruct_faults") == {("oai", "http_500"): 6}


def test_names_are_prometheus_names_without_the_suffix_ray_adds():
    for name, spec in SPECS.items():
        assert re.fullmatch(r"selfinstruct_[a-z_]+", name)
        assert not name.endswith("_total")  # Ray's exporter adds it to every counter
        assert set(spec.tags) <= {"stage", "rule", "model", "decision", "kind"}


def test_the_export_port_is_for_a_new_local_ray():
    for ray in ({"metrics_export_port": 9100}, {"address": "local", "metrics_export_port": 9100}):
        assert parse_config({"ray": ray}, "p.yaml", Path(".")).ray.metrics_export_port == 9100
    with pytest.raises(ConfigError, match=r"p.yaml: ray: metrics_export_port is for a new local "
                       r"Ray; a cluster's nodes set theirs with `ray start --metrics-export"):
        parse_config({"ray": {"address": "10.0.0.5:6379", "metrics_export_port": 9100}},
                     "p.yaml", Path("."))
    with pytest.raises(ConfigError, match="ray.metrics_export_port: Input should be greater"):
        parse_config({"ray": {"metrics_export_port": 80}}, "p.yaml", Path("."))
