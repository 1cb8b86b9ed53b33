"""Parse retries: an unusable answer is asked again in a way that can answer differently, and
a replay asks exactly what the run asked (LLMClient with a fake model; no Ray, no server)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from pydantic import ValidationError

from actors.config import PipelineConfig
from actors.providers.client import LLMClient, client_for
from actors.providers.llm import Completion, Request


class FakeModel:
    """Like the embedded model: a greedy request (temperature 0 or top_p 0) gets one answer
    whatever its seed; a sampled one gets the answer its seed picks ('??' unless listed)."""

    def __init__(self, sampled: dict[int, str]) -> None:
        self.sampled = sampled
        self.asked: list[Request] = []
        self.times: list[float] = []  # when the work each request serves was first asked

    def bind(self, *holder: str) -> None:
        pass

    async def complete(self, req: Request, asked: float = 0.0) -> Completion:
        self.asked.append(req)
        self.times.append(asked)
        greedy = not req.temperature or not req.top_p
        return Completion("??" if greedy else self.sampled.get(req.seed, "??"), "stop", "m")


def problem(c: Completion) -> str:
    return "" if c.text == "Yes" else "not Yes"


def ask(client: LLMClient, req: Request) -> tuple[Completion, list[str]]:
    c, retried = asyncio.run(client.complete_parsed(req, problem))
    return c, [a.completion.text for a in retried]


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (0.7, 0.0)])
def test_a_greedy_request_is_asked_again_sampling_with_new_seeds(temperature, top_p):
    model = FakeModel({5 + 2 * 7919: "Yes"})
    req = Request("Is it spam?", temperature, top_p, 3, seed=5)
    c, retried = ask(LLMClient(model, parse_retries=2, retry_temperature=0.4), req)
    assert c.text == "Yes" and retried == ["??", "??"]
    assert model.asked == [req] + [
        dataclasses.replace(req, seed=5 + n * 7919, temperature=0.4, top_p=1.0) for n in (1, 2)]


def test_a_sampled_request_is_asked_again_with_new_seeds_only():
    model = FakeModel({3 + 7919: "Yes"})
    req = Request("p", 0.7, 0.5, 100, seed=3)
    c, retried = ask(LLMClient(model, parse_retries=2), req)
    assert c.text == "Yes" and retried == ["??"]  # usable: no further retry
    assert model.asked == [req, dataclasses.replace(req, seed=3 + 7919)]
    # The retry keeps its first attempt's time: the embedded model serves it before later work.
    assert model.times[0] > 0 and model.times == [model.times[0]] * 2


def test_retries_stop_at_parse_retries_and_the_last_answer_is_used():
    model = FakeModel({})
    c, retried = ask(LLMClient(model, parse_retries=1), Request("p", 0.0, 1.0, 3, seed=0))
    assert c.text == "??" and retried == ["??"] and len(model.asked) == 2
    model = FakeModel({})
    ask(LLMClient(model, parse_retries=0), Request("p", 0.0, 1.0, 3, seed=0))
    assert len(model.asked) == 1


def test_a_replay_asks_what_the_run_asked(tmp_path):
    cache = str(tmp_path / "responses.sqlite")
    req = Request("Is it spam?", 0.0, 0.0, 3, seed=11)
    run = ask(LLMClient(FakeModel({11 + 2 * 7919: "Yes"}), parse_retries=2,
                        cache_path=cache), req)
    replay = LLMClient(None, parse_retries=2, cache_path=cache, replay_only=True)
    c, retried = ask(replay, req)
    assert (c.text, retried) == (run[0].text, run[1]) == ("Yes", ["??", "??"]) and c.cached


def test_the_stage_config_reaches_the_client():
    cfg = PipelineConfig.model_validate({"stages": {"classify": {"parse_retries": 3,
                                                           "retry_temperature": 0.5}}})
    client = client_for(cfg, "classify", {"local": []}, None, {}, None)
    assert (client.parse_retries, client.retry_temperature) == (3, 0.5)
    with pytest.raises(ValidationError, match="retry_temperature"):
        PipelineConfig.model_validate({"stages": {"instances": {"retry_temperature": 0.0}}})
