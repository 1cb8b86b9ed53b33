"""Whole runs with `delivery: batch` on the fake API's batch endpoints (a real local Ray):
a batch run reaches its target at half the cost, a run killed mid-batch resumes without
submitting anything twice, and expired or failed items are asked again and counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from actors.rundir.batchlog import read_batches
from tests.runs import check_finished, config, kill_session, lines, start, wait_for
from tests.servers import fake_server
from tests.test_providers_live import KEY, assert_no_secret, run_cli

pytestmark = pytest.mark.slow

PRICE = {"input_per_mtok": 3.0, "output_per_mtok": 15.0}


def batch_config(tmp_path: Path, url: str, delivery: dict[str, str],
                 provider: str = "anthropic", **batch: Any) -> Path:
    base = url if provider == "anthropic" else f"{url}/v1"
    stages = {s: {"model": "api", "mode": "chat", "delivery": delivery.get(s, "online"),
                  "batch": {"max_requests": 40, "max_wait_s": 0.5, "poll_s": 0.2} | batch}
              for s in ("propose", "classify", "instances")}
    return config(tmp_path, models={"api": {
        "provider": provider, "model": "fake", "base_url": base, "api_key_env": "SI_FAKE_KEY",
        "price": PRICE}}, stages=stages)


ALL = {"propose": "batch", "classify": "batch", "instances": "batch"}


def test_a_batch_run_writes_what_the_online_run_writes_at_half_the_cost(tmp_path):
    online, batched = tmp_path / "online", tmp_path / "batched"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # A server each: its prompt cache (what a request reads or writes) starts empty for both.
    with fake_server(latency=0.02) as srv:
        proc = run_cli(batch_config(tmp_path / "a", srv.url, {}), online, 12)
        assert proc.returncode == 0, proc.stderr[-3000:]
    with fake_server(latency=0.02, batch_delay=0.3) as srv:
        proc = run_cli(batch_config(tmp_path / "b", srv.url, ALL, max_requests=10), batched,
                       12)
        assert proc.returncode == 0, proc.stderr[-3000:]
        stats = srv.stats()
    a, b = check_finished(online, 12), check_finished(batched, 12)
    # The same stage logic: the same tasks, instances and provenance, whichever way the
    # answers came.
    def data(out: Path) -> list[Any]:
        return [(t["instruction"], t["instances"], t["provenance"]["shots"])
                for t in lines(out / "dataset.jsonl")]
    assert data(online) == data(batched)
    cost_a, cost_b = a["totals"]["all"]["cost_usd"], b["totals"]["all"]["cost_usd"]
    assert a["totals"]["all"]["prompt_tokens"] == b["totals"]["all"]["prompt_tokens"]
    assert cost_b == pytest.approx(cost_a / 2, rel=1e-3)
    assert b["totals"]["all"]["batch_saved_usd"] == pytest.approx(cost_b, rel=1e-3)
    assert b["totals"]["all"]["batch_requests"] == b["totals"]["all"]["requests"]
    responses = lines(batched / "responses.jsonl")
    assert all(r["batch_id"] for r in responses)
    logged = read_batches(batched)
    assert {r["batch_id"] for r in responses} <= set(logged)
    assert b["batches"]["batches"] == len(logged) > 3  # waves of at most 10 requests
    assert max(stats["batch_submissions"].values()) == 1


def test_sigkill_mid_batch_then_resume_polls_the_same_batch(tmp_path):
    out = tmp_path / "run"
    with fake_server(latency=0.02, batch_delay=60) as srv:
        cfg = batch_config(tmp_path, srv.url, ALL)
        proc = start(cfg, out, 8, SI_FAKE_KEY=KEY)
        wait_for(lambda: read_batches(out), 120, proc)
        kill_session(proc)
        first = read_batches(out)
        assert first and not any(b["status"] for b in first.values())
        submitted = sum(srv.stats()["batch_submissions"].values())
        srv.control(batch_delay=0.3)  # the batches out end soon now
        proc = run_cli(cfg, out, 8, "--resume")
        assert proc.returncode == 0, proc.stderr[-3000:]
        stats = srv.stats()
    check_finished(out, 8)
    # Nothing the killed run submitted went out again, and its answers were used.
    assert max(stats["batch_submissions"].values()) == 1
    assert sum(stats["batch_submissions"].values()) > submitted
    killed = set(first)
    used = {r["batch_id"] for r in lines(out / "responses.jsonl")}
    assert killed & used, "the resumed run did not use the batch the killed run submitted"
    events = (out / "events.jsonl").read_text()
    assert '"batches_found"' in events
    assert_no_secret(out, proc)


@pytest.mark.parametrize("provider,retry", [("anthropic", "batch"), ("openai", "online")])
def test_expired_and_failed_items_are_asked_again_and_counted(tmp_path, provider, retry):
    out = tmp_path / "run"
    with fake_server(latency=0.02, batch_delay=0.3, batch_error_rate=0.15,
                     batch_expire_rate=0.15, seed=3) as srv:
        cfg = batch_config(tmp_path, srv.url, ALL, provider=provider, retry=retry,
                           max_item_retries=3)
        proc = run_cli(cfg, out, 10)
        stats = srv.stats()
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = check_finished(out, 10)
    faults = run["faults"]
    assert faults.get("batch_errored", 0) > 0 and faults.get("batch_expired", 0) > 0
    # Counted where they happen: every failed item the server sent back, kind by kind.
    outcomes = stats["batch_outcomes"]
    assert (faults["batch_errored"], faults["batch_expired"]) == (outcomes["errored"],
                                                                 outcomes["expired"])
    batches = run["batches"]
    if retry == "online":
        assert batches["retried_online"] == faults["batch_errored"] + faults["batch_expired"]
    else:
        assert batches["requeued"] == faults["batch_errored"] + faults["batch_expired"]
    assert sum(batches["failed"].values()) == faults["batch_errored"] + faults["batch_expired"]
    print(json.dumps({"faults": faults, "batches": batches,
                      "server": {k: v for k, v in stats.items() if k.startswith("batch")
                                 and k != "batch_submissions"}}))
