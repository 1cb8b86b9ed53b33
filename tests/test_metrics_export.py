"""The run's metrics on Ray's Prometheus endpoint: a short run on the fake API, with
`ray.metrics_export_port` set, in a local Ray of this test's own. The selfinstruct series at
http://127.0.0.1:PORT/metrics show the run's progress while it runs, and come to equal
run.json's figures once it has stopped."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.config import load_config
from actors.engine.pipeline import run_pipeline
from tests.runs import check_finished, config
from tests.servers import fake_server, free_port

pytestmark = pytest.mark.slow

OURS = {"stage", "rule", "model", "decision", "kind"}  # Ray adds WorkerId, SessionName, ...
SERIES = re.compile(r"^(ray_selfinstruct_\w+)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Series = dict[str, dict[tuple[tuple[str, str], ...], float]]


@pytest.fixture(autouse=True)
def _own_local_ray():
    """This test's driver starts its own local Ray (so the port is its); shut down after."""
    if ray.is_initialized():
        ray.shutdown()
    yield
    ray.shutdown()


def scrape(port: int) -> Series:
    """The selfinstruct series on the endpoint, by name and our tags (summed over the
    processes that recorded them)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Series = {}
    for line in text.splitlines():
        if m := SERIES.match(line):
            tags = tuple(sorted((k, v) for k, v in LABEL.findall(m.group(2) or "") if k in OURS))
            by_tags = out.setdefault(m.group(1), {})
            by_tags[tags] = by_tags.get(tags, 0.0) + float(m.group(3))
    return out


class Watcher(threading.Thread):
    """Scrapes the endpoint every half second while the run goes: the requests recorded as
    the endpoint shows them, each with the status run.json had just before."""

    def __init__(self, port: int, out: Path) -> None:
        super().__init__(daemon=True)
        self.port, self.out, self.done = port, out, threading.Event()
        self.seen: list[tuple[str, float]] = []

    def run(self) -> None:
        while not self.done.wait(0.5):
            try:
                status = json.loads((self.out / "run.json").read_text())["status"]
                requests = scrape(self.port).get("ray_selfinstruct_requests_total", {})
            except (OSError, ValueError):  # Ray or run.json not there yet, or half written
                continue
            self.seen.append((status, sum(requests.values())))


def expected(run: dict[str, Any]) -> Series:
    """What the counters must say for a fresh run, from run.json (zeros make no series)."""
    out: Series = {"ray_selfinstruct_tasks_written_total": {(): run["tasks"]}}

    def put(name: str, value: float, **tags: str) -> None:
        if value:
            out.setdefault(f"ray_selfinstruct_{name}_total", {})[
                tuple(sorted(tags.items()))] = value

    for stage, c in run["counts"].items():
        for decision in ("accepted", "rejected"):
            put("candidates", c[decision], stage=stage, decision=decision)
        for rule, n in c["reasons"].items():
            put("rejections", n, stage=stage, rule=rule)
    for key, u in run["usage"].items():
        stage, _, model = key.partition(":")
        put("requests", u["requests"], stage=stage, model=model)
        put("request_errors", u["errors"], stage=stage, model=model)
        put("cache_hits", u["cache_hits"], stage=stage, model=model)
        put("cost_usd", round(u["cost_usd"], 9), stage=stage, model=model)
        for kind in ("prompt", "completion", "cache_read", "cache_write"):
            put("tokens", u[f"{kind}_tokens"], stage=stage, model=model, kind=kind)
    for model, lim in run["limits"].items():
        for kind, n in lim["faults"].items():
            put("faults", n, model=model, kind=kind)
    return out


def counters(series: Series) -> Series:
    return {name: {tags: round(v, 9) for tags, v in by_tags.items()}
            for name, by_tags in series.items() if name.endswith("_total")}


def test_metrics_on_the_endpoint_equal_run_json(tmp_path, monkeypatch):
    monkeypatch.setenv("SI_FAKE_KEY", "sk-test-metrics")
    # Ray's agent takes each process's figures every report interval (10 s unless set).
    monkeypatch.setenv("RAY_metrics_report_interval_ms", "1000")
    port = free_port()
    out = tmp_path / "run"
    # Slow enough that the run lasts several report intervals (at 0.1 s it took ~3 s).
    with fake_server(latency=0.5, fault_rate=0.2, faults="truncate=1", retry_after=0.1,
                     seed=3) as srv:
        srv.inject("429", 2)
        srv.inject("500", 1)
        common = {"max_retries": 4, "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
        path = config(
            tmp_path, ray={"address": "local", "metrics_export_port": port},
            models={"oai": {"provider": "openai_compatible", "model": "fake-oai",
                            "base_url": f"{srv.url}/v1", **common},
                    "claude": {"provider": "anthropic", "model": "fake-claude",
                               "base_url": srv.url, "api_key_env": "SI_FAKE_KEY", **common}},
            stages={s: {"model": m, "max_in_flight_per_actor": 16} for s, m in
                    (("propose", "oai"), ("classify", "claude"), ("instances", "claude"))})
        (watcher := Watcher(port, out)).start()
        try:
            run_pipeline(load_config(path), out_dir=str(out), target=12, progress=False)
        finally:
            watcher.done.set()
            watcher.join()
    run = check_finished(out, 12)
    assert run["faults"]["http_429"] == 2 and run["faults"]["http_500"] == 1
    assert sum(c["rejected"] for c in run["counts"].values()) > 0
    # Progress showed while run.json still said "running" (the final update comes after).
    assert any(status == "running" and n > 0 for status, n in watcher.seen), watcher.seen
    want = expected(run)
    deadline = time.time() + 30
    while counters(got := scrape(port)) != want and time.time() < deadline:
        time.sleep(1)
    assert counters(got) == want, json.dumps(
        {"got": {k: str(v) for k, v in counters(got).items()},
         "want": {k: str(v) for k, v in want.items()}}, indent=1)
    assert got["ray_selfinstruct_pool_size"] == {(): run["pool"]["pool_size"]}
    assert set(got["ray_selfinstruct_queue_depth"]) == {
        (("stage", s),) for s in ("dedup", "classify", "instances")}
    for name in ("requests_in_flight", "rate_factor"):
        assert set(got[f"ray_selfinstruct_{name}"]) == {(("model", "oai"),),
                                                       (("model", "claude"),)}
