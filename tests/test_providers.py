"""Request shaping for the providers, keys, parse retries and the dry-run estimate (pure)."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from actors.config import Limits, load_config
from actors.engine.limits import cost_usd
from actors.engine.run_inputs import (
    RunError,
    api_keys,
    cache_prefixes,
    load_all_seeds,
    load_templates,
)
from actors.method.stages import StageLogic, looks_like_text, response_records
from actors.providers.api import (
    Secret,
    anthropic_messages,
    apply_stops,
    openai_params,
    retry_after_s,
)
from actors.providers.llm import Attempt, Completion, Request
from actors.tools.estimate import estimate, model_minutes, prompt_tokens, render
from tests.conftest import ROOT
from tests.runs import config


def test_secret_never_shows_itself():
    s = Secret("sk-very-secret")
    assert "sk-very" not in repr(s) and "sk-very" not in str(s) and "sk-very" not in f"{s!r}"
    assert pickle.loads(pickle.dumps(s)).reveal() == "sk-very-secret"


def test_retry_after_forms():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after_s({"retry-after": later}) <= 31
    assert retry_after_s({}) is None


def test_openai_params_drop_what_the_model_rejects():
    req = Request("p", 0.7, 0.5, 100, 2.0, 0.0, ("\n\n",), 3)
    params = openai_params(req, {"top_p", "seed"})
    assert params == {"temperature": 0.7, "presence_penalty": 2.0, "frequency_penalty": 0.0,
                      "stop": ["\n\n"]}
    # No seed and no stops: not sent at all (the SDK would send them as null).
    assert set(openai_params(Request("p", 0.0, 1.0, 100), set())) == {
        "temperature", "top_p", "presence_penalty", "frequency_penalty"}


def test_stops_applied_client_side():
    assert apply_stops("a. b\n\nc", ("\n\n", "16.")) == ("a. b", True)
    assert apply_stops("no stop here", ("\n\n",)) == ("no stop here", False)
    assert apply_stops("a 16. b\n\nc", ("\n\n", "16.")) == ("a ", True)  # the earliest stop


def test_anthropic_chat_prompt_caches_the_few_shot_prefix():
    prompt = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q1"},
              {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    system, turns = anthropic_messages(prompt, cache=True)
    assert system == [{"type": "text", "text": "sys"}]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in turns[2]["content"][0]
    _, plain = anthropic_messages(prompt, cache=False)
    assert all("cache_control" not in b for t in plain for b in t["content"])
    # One user turn, nothing fixed before it but the system prompt: that is what is cached.
    system, _ = anthropic_messages([prompt[0], prompt[-1]], cache=True)
    assert system[-1]["cache_control"] == {"type": "ephemeral"}


def test_anthropic_completion_prompt_splits_at_the_known_prefix():
    _, turns = anthropic_messages("FIXED PART\nTask: x", cache=True, prefixes=("FIXED PART\n",))
    blocks = turns[0]["content"]
    assert [b["text"] for b in blocks] == ["FIXED PART\n", "Task: x"]
    assert blocks[0]["cache_control"] == {"type": "ephemeral"}
    _, other = anthropic_messages("something else", cache=True, prefixes=("FIXED PART\n",))
    assert other[0]["content"] == [{"type": "text", "text": "something else"}]


def test_fixed_prefixes_of_the_shipped_templates():
    cfg = load_config(ROOT / "pipeline.yaml")
    templates = load_templates(cfg)
    prefixes = cache_prefixes(templates, "instances")
    assert len(prefixes) == 2 and all(p.endswith("\n\nTask: ") for p in prefixes)
    assert cache_prefixes(templates, "classify") == ()  # a chat template: its messages split
    assert cache_prefixes(templates, "propose") == ("Come up with a series of tasks:\n",)


def test_missing_key_is_named_without_a_value(tmp_path, monkeypatch):
    path = config(tmp_path, models={"claude": {"provider": "anthropic", "model": "m",
                                               "api_key_env": "SI_TEST_KEY"}},
                  stages={})
    cfg = load_config(path)
    cfg.stages.propose.model = "claude"
    monkeypatch.delenv("SI_TEST_KEY", raising=False)
    with pytest.raises(RunError, match="models.claude: the environment variable SI_TEST_KEY"):
        api_keys(cfg)
    monkeypatch.setenv("SI_TEST_KEY", "sk-abc")
    keys = api_keys(cfg)
    assert keys["claude"].reveal() == "sk-abc" and "sk-abc" not in repr(keys)


def test_unusable_answers_are_detected_and_recorded():
    stages = StageLogic(load_config(ROOT / "pipeline.yaml"),
                    load_templates(load_config(ROOT / "pipeline.yaml")))
    garbage = Completion("}{ ## ~~ ^^ ** ;; [[ ]] %% $$", "stop", "m")
    good = Completion(" Write a haiku about rain.\n10. Name three rivers in Asia.", "stop", "m")
    assert stages.propose_problem(garbage) == "the response is not text"
    assert stages.propose_problem(good) == ""
    assert stages.classify_problem(Completion("Maybe", "stop", "m")).startswith("neither")
    assert stages.classify_problem(Completion("Yes", "stop", "m")) == ""
    task = {"is_classification": False, "instruction": "x"}
    assert stages.instance_problem(task, garbage)
    assert stages.instance_problem(task, Completion("Input: a b\nOutput: c d", "stop", "m")) == ""
    # Not asked again: an answer cut off by the length limit (the method drops it whole) and
    # no answer at all (an error or a cancelled request is not a parse problem).
    for unusable in (dataclasses.replace(garbage, finish_reason="length"),
                     Completion("", "error", "m", error="HTTP 500")):
        assert stages.propose_problem(unusable) == ""
        assert stages.instance_problem(task, unusable) == ""
    assert stages.classify_problem(Completion("", "cancelled", "m")) == ""
    recs = response_records("c-task_000001", "classify", Completion("No", "stop", "m"),
                            [Attempt(Completion("??", "stop", "m", faults={"http_429": 1}),
                                     "neither Yes nor No")])
    assert [r["id"] for r in recs] == ["c-task_000001~1", "c-task_000001"]
    assert recs[0]["retry_of"] == "c-task_000001"
    assert recs[0]["faults"] == {"http_429": 1, "unparseable": 1}
    assert looks_like_text("Summarise the article in two sentences.")
    assert not looks_like_text("@@ ## !! ** ((")


def test_dry_run_estimate_works_back_from_the_target(monkeypatch):
    cfg = load_config(ROOT / "pipeline.yaml")
    data = {"provider": "anthropic", "model": "m",
            "price": {"input_per_mtok": 3.0, "output_per_mtok": 15.0},
            "limits": {"requests_per_minute": 100, "max_in_flight": 10}}
    cfg2 = load_config(ROOT / "pipeline.yaml").model_validate(
        {**cfg.model_dump(), "models": {"local": cfg.models["local"].model_dump(), "api": data},
         "stages": {**cfg.stages.model_dump(),
                    "instances": {**cfg.stages.instances.model_dump(), "model": "api"}}})
    templates, seeds = load_templates(cfg), load_all_seeds(cfg)
    # The shipped instance prefix (~750 tokens) is under Anthropic's minimum for caching...
    assert estimate(cfg2, 100, templates, seeds)["stages"]["instances"][
        "cached_input_tokens"] == 0
    monkeypatch.setattr("actors.tools.estimate.CACHE_MIN_TOKENS", 500)  # ... and over this one.
    est = estimate(cfg2, 100, templates, seeds)
    inst = est["stages"]["instances"]
    assert inst["requests"] == 125                      # 100 kept at 0.8 task success
    assert est["stages"]["propose"]["cost_usd"] == 0.0  # the embedded model costs nothing
    assert est["cost_usd"] == inst["cost_usd"]
    # The instance prompt's examples: written to the cache once, read by the other 124.
    size, prefix = prompt_tokens(cfg2, templates, seeds)["instances"]
    assert inst["cached_input_tokens"] == round(124 * prefix)
    assert inst["cost_usd"] == round(cost_usd(cfg2.models["api"].price, 125 * size
                                              - 125 * prefix, inst["output_tokens"],
                                              124 * prefix, prefix), 4)
    assert est["minutes_by_model"]["api"] == pytest.approx(125 / 100, abs=0.06)
    assert "dry run for 100 tasks" in render(est)
    # Time is the slowest bound: requests in flight at the latency, and each per-minute
    # limit, with output counted at max_tokens (reserved so) whatever a response uses.
    api = cfg2.models["api"].model_copy(update={"limits": Limits(
        requests_per_minute=100, max_in_flight=10, output_tokens_per_minute=1000)})
    assert model_minutes(api, {"requests": 60, "input": 0, "output": 0}, 20.0) == 2.0
    assert model_minutes(api, {"requests": 60, "input": 0, "output": 3000}, 1.0) == 3.0
    cfg2.models["api"] = api
    assert estimate(cfg2, 100, templates, seeds)["minutes_by_model"]["api"] == pytest.approx(
        125 * cfg2.stages.instances.max_tokens / 1000, abs=0.06)


def test_dry_run_prints_online_and_batch_cost_side_by_side():
    cfg = load_config(ROOT / "pipeline.yaml")
    api = {"provider": "anthropic", "model": "m",
           "price": {"input_per_mtok": 3.0, "output_per_mtok": 15.0},
           "batches": {"price_factor": 0.4, "turnaround_s": 1800}}
    stages = cfg.stages.model_dump()
    for stage in stages.values():
        stage["model"] = "api"
    stages["instances"]["delivery"] = "batch"
    cfg2 = cfg.model_validate({**cfg.model_dump(), "models": {"api": api}, "stages": stages})
    est = estimate(cfg2, 100, load_templates(cfg), load_all_seeds(cfg))
    inst, prop = est["stages"]["instances"], est["stages"]["propose"]
    assert inst["batch_usd"] == pytest.approx(inst["online_usd"] * 0.4, abs=1e-4)
    assert inst["cost_usd"] == inst["batch_usd"] and prop["cost_usd"] == prop["online_usd"]
    assert est["batch_cost_usd"] == pytest.approx(est["online_cost_usd"] * 0.4, abs=1e-3)
    # 125 instance requests fit one wave of 1000; with all three stages batched the chain
    # of proposal waves (capped at machine_shot_lag = 20 prompts, 2 batches in flight) sets
    # the pace, plus a turnaround each for classification and instances.
    waves = -(-prop["requests"] // 40)
    assert est["batch_minutes"] == pytest.approx((waves + 2) * 30, abs=0.1)
    table = render(est)
    assert "online USD" in table and "batch USD" in table and "time online" in table
