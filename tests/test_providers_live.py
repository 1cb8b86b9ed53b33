"""The providers against real servers on loopback: llama.cpp's OpenAI-protocol server with the
embedded model, and the project's fault-injecting server speaking OpenAI's and Anthropic's wire
formats. Provider-level tests need no Ray; the runs start a real local Ray (marked slow)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from actors.config import ApiModel
from actors.providers.api import Secret, make_provider
from actors.providers.llm import Completion, Request
from tests.runs import check_consistent, check_finished, config, env, lines
from tests.servers import fake_server, free_port, llama_server

KEY = "sk-test-0123456789abcdef"  # must never appear in a log, a run directory or an error


def model(provider: str, url: str, **extra: Any) -> ApiModel:
    base = url if provider == "anthropic" else f"{url}/v1"
    return ApiModel.model_validate({"provider": provider, "model": "fake-model",
                                    "base_url": base, **extra})


def ask(conf: ApiModel, *reqs: Request, throttles: list | None = None) -> list[Completion]:
    async def go() -> list[Completion]:
        seen = throttles if throttles is not None else []
        p = make_provider(conf, Secret(KEY), seen.append)
        return [await p.complete(r) for r in reqs]
    return asyncio.run(go())


CHAT = [{"role": "user", "content": "Task: Decide whether the review is positive.\n"
                                    "Is it classification?"}]
PROPOSE = "Come up with a series of tasks:\n1. Write a poem about rain.\n2."


@pytest.mark.slow
def test_openai_provider_against_llama_cpp_server_chat_and_completions():
    with llama_server() as url:
        conf = ApiModel(provider="openai_compatible", model="smollm2", base_url=url,
                        timeout_s=120, max_retries=1)
        chat, comp, short = ask(
            conf, Request([{"role": "user", "content": "Name a colour."}], 0.0, 1.0, 16),
            Request(PROPOSE, 0.7, 0.5, 64, 2.0, 0.0, ("\n\n", "16."), 1),
            Request("Once upon a time", 0.0, 1.0, 2))
    for c in (chat, comp, short):
        assert not c.error and c.text and c.prompt_tokens > 0 and c.completion_tokens > 0
        assert c.model == "smollm2" and c.latency_s > 0
    assert "\n\n" not in comp.text                      # the server honoured the stop
    assert short.finish_reason == "length" and short.completion_tokens == 2


@pytest.mark.parametrize("provider", ["openai_compatible", "anthropic"])
def test_both_sdks_retry_faults_and_count_them(provider):
    with fake_server(retry_after=0.2, hang_s=5) as srv:
        conf = model(provider, srv.url, timeout_s=1.0, max_retries=2)
        throttles: list = []
        srv.inject("429", 1)
        (c,) = ask(conf, Request(CHAT, 0.0, 1.0, 3), throttles=throttles)
        assert c.text.strip() in ("Yes", "No") and c.faults == {"http_429": 1}
        assert throttles == [pytest.approx(0.2)]        # the gate hears the retry-after
        srv.inject("500", 1)
        (c,) = ask(conf, Request(CHAT, 0.0, 1.0, 3))
        assert not c.error and c.faults == {"http_500": 1}
        srv.inject("timeout", 1)
        (c,) = ask(conf, Request(CHAT, 0.0, 1.0, 3))
        assert not c.error and c.faults == {"timeout": 1}
        srv.inject("500", 3)                            # more than the retries: recorded
        (c,) = ask(conf, Request(CHAT, 0.0, 1.0, 3))
        assert c.finish_reason == "error" and "500" in c.error and c.faults == {"http_500": 3}
        assert KEY not in c.error
        srv.inject("truncate", 1)
        (c,) = ask(conf, Request(PROPOSE, 0.7, 0.5, 400, stop=("\n\n",)))
        assert c.finish_reason == "length"
        srv.inject("garbage", 1)
        (c,) = ask(conf, Request(PROPOSE, 0.7, 0.5, 400, stop=("\n\n",)))
        assert c.finish_reason == "stop" and not any(ch.isdigit() for ch in c.text)
        stats = srv.stats()
    assert KEY not in json.dumps(stats)


def test_anthropic_prompt_cache_usage_is_reported():
    few_shot = [{"role": "user", "content": "Task: a\nIs it classification?"},
                {"role": "assistant", "content": "No"},
                {"role": "user", "content": "Task: b\nIs it classification?"}]
    with fake_server() as srv:
        first, second = ask(model("anthropic", srv.url), Request(few_shot, 0.0, 1.0, 3),
                            Request(few_shot, 0.0, 1.0, 3))
    assert first.cache_write_tokens > 0 and first.cache_read_tokens == 0
    assert second.cache_read_tokens == first.cache_write_tokens


# -- whole runs -----------------------------------------------------------------------------

def api_run_config(tmp_path: Path, models: dict[str, dict[str, Any]],
                   stages: dict[str, dict[str, Any]], **sections: Any) -> Path:
    return config(tmp_path, models=models, stages=stages, **sections)


def run_cli(cfg: Path, out: Path, target: int, *extra: str, key: str = KEY,
            timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "actors", "run", str(cfg), "--out", str(out), "--target",
         str(target), "--no-progress", *extra],
        cwd=out.parent, env=env(SI_FAKE_KEY=key), capture_output=True, text=True,
        timeout=timeout)


def assert_no_secret(out: Path, proc: subprocess.CompletedProcess) -> None:
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in proc.stdout + proc.stderr


def three_stages(propose: str, classify: str, instances: str, in_flight: int = 16
                 ) -> dict[str, dict[str, Any]]:
    return {"propose": {"model": propose, "max_in_flight_per_actor": in_flight},
            "classify": {"model": classify, "max_in_flight_per_actor": in_flight},
            "instances": {"model": instances, "max_in_flight_per_actor": in_flight}}


@pytest.mark.slow
def test_run_through_the_openai_provider_on_llama_cpp_server(tmp_path):
    with llama_server() as url:
        cfg = api_run_config(
            tmp_path, {"llama": {"provider": "openai_compatible", "model": "smollm2",
                                 "base_url": url, "limits": {"max_in_flight": 4}}},
            three_stages("llama", "llama", "llama", in_flight=4))
        proc = run_cli(cfg, tmp_path / "run", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = check_finished(tmp_path / "run", 2)
    assert run["totals"]["by_model"]["smollm2"]["prompt_tokens"] > 0
    assert set(run["totals"]["by_stage"]) == {"propose", "classify", "instances"}


@pytest.mark.slow
def test_run_with_20_percent_faults_reaches_its_target_and_counts_them(tmp_path):
    out = tmp_path / "run"
    with fake_server(latency=0.05, fault_rate=0.2, retry_after=0.2, hang_s=3, seed=1) as srv:
        common = {"api_key_env": "SI_FAKE_KEY", "timeout_s": 1.5, "max_retries": 3,
                  "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
        cfg = api_run_config(tmp_path, {
            "oai": {"provider": "openai_compatible", "model": "fake-oai",
                    "base_url": f"{srv.url}/v1", **common},
            "claude": {"provider": "anthropic", "model": "fake-claude", "base_url": srv.url,
                       **common}},
            three_stages("oai", "claude", "claude"))
        proc = run_cli(cfg, out, 30)
        stats = srv.stats()
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = check_finished(out, 30)
    faults = run["faults"]
    injected = {k: v for k, v in stats["faults"].items() if v}
    assert sum(injected.values()) >= 10
    # Every HTTP-level fault the server injected is counted in run.json, kind by kind: the
    # gate hears each request's faults, whether or not its answer was recorded.
    http = {"429": "http_429", "500": "http_500", "timeout": "timeout"}
    assert {v: faults.get(v, 0) for v in http.values()} == {
        v: injected.get(k, 0) for k, v in http.items()}, (faults, injected)
    assert faults.get("unparseable", 0) > 0 or not injected.get("garbage")
    assert run["totals"]["all"]["cost_usd"] > 0
    assert set(run["totals"]["by_model"]) == {"fake-oai", "fake-claude"}
    assert run["totals"]["all"]["requests"] == len(lines(out / "responses.jsonl"))
    assert_no_secret(out, proc)


@pytest.mark.slow
def test_two_proposers_share_a_60_per_minute_limit(tmp_path):
    """The propose model's 60 requests/minute hold for both proposer actors together."""
    out = tmp_path / "run"
    with fake_server(latency=0.05) as srv:
        cfg = api_run_config(tmp_path, {
            "slow": {"provider": "openai_compatible", "model": "rpm-limited",
                     "base_url": f"{srv.url}/v1", "limits": {"requests_per_minute": 60}},
            "fast": {"provider": "anthropic", "model": "unlimited", "base_url": srv.url,
                     "api_key_env": "SI_FAKE_KEY"}},
            three_stages("slow", "fast", "fast", in_flight=20),
            actors={"proposers": 2}, run={"max_minutes": 1.6})
        proc = run_cli(cfg, out, 100_000)
        stats = srv.stats()
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = check_consistent(out)
    assert run["stop_reason"] == "time_limit"
    starts = sorted(stats["arrivals_by_path"]["/v1/completions"])
    busiest = max(sum(1 for t in starts if s <= t < s + 60.0) for s in starts)
    assert busiest <= 60, busiest
    assert len(starts) >= 60                    # and the limit is used, not starved
    by_actor = run["limits"]["slow"]["requests_by_actor"]
    assert set(by_actor) == {"proposer-0", "proposer-1"} and min(by_actor.values()) >= 10


@pytest.mark.slow
def test_max_cost_stops_gracefully_within_budget(tmp_path):
    out = tmp_path / "run"
    with fake_server(latency=0.05) as srv:
        cfg = api_run_config(tmp_path, {
            "paid": {"provider": "anthropic", "model": "paid", "base_url": srv.url,
                     "api_key_env": "SI_FAKE_KEY",
                     "price": {"input_per_mtok": 10.0, "output_per_mtok": 30.0}}},
            three_stages("paid", "paid", "paid"))
        proc = run_cli(cfg, out, 60, "--max-cost", "0.5")  # the whole 60 would cost ~$1.5
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = check_consistent(out)
    assert run["status"] == "stopped" and run["stop_reason"] == "max_cost"
    assert 0.3 < run["budget"]["spent_usd"] <= 0.5
    assert run["tasks"] > 0


@pytest.mark.slow
def test_a_dead_provider_stops_the_run_with_a_clear_error(tmp_path):
    out = tmp_path / "run"
    cfg = api_run_config(tmp_path, {
        "gone": {"provider": "openai_compatible", "model": "gone", "timeout_s": 2,
                 "base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0,
                 "fail_after": 5, "api_key_env": "SI_FAKE_KEY"}},
        three_stages("gone", "gone", "gone"))
    proc = run_cli(cfg, out, 5, timeout=300)
    assert proc.returncode == 1
    assert "models.gone: provider unreachable or refusing" in proc.stderr
    run = check_consistent(out)
    assert run["status"] == "failed" and run["totals"]["all"]["errors"] >= 5
    assert_no_secret(out, proc)
