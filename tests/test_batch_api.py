"""The providers' batch APIs against the fake server (in a thread; no Ray): a batched request
is sent as the online one is and its answer is read the same way; failed, expired and
cancelled items say so; a batch's size is known before it is sent."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from actors.config import ApiModel
from actors.method.prompts import load_template, number_shots
from actors.providers.api import Secret, WatchingTransport, make_provider
from actors.providers.batch_api import (
    BatchApi,
    BatchApiError,
    BatchItem,
    BatchState,
    make_batch_api,
)
from actors.providers.llm import Completion, Request
from tests.conftest import ROOT
from tests.fakeapi import Handle, serve

PROMPTS = ROOT / "prompts"
KEY = "sk-batch-test-secret"
# "\n" is whitespace alone: Anthropic is not sent it, so its answers are cut there when read.
STOPS = ("\n", "16.")
SHOTS = number_shots([f"Write a short note about topic number {i}." for i in range(1, 9)])
TASKS = ("Classify the sentiment of the movie review as positive or negative.",
         "Write a poem about the sea at night.", "Suggest a name for a new brand of tea.")
INSTANCES = load_template(PROMPTS, "instances_input_first", "completion")
PREFIXES = (INSTANCES.fixed_prefix,)


def cid(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def requests(mode: str) -> list[tuple[str, Request]]:
    """Each stage's prompts in one mode; the proposal's answer is cut by max_tokens."""
    prompts = [load_template(PROMPTS, "propose", mode).render(shots=SHOTS)]
    for task in TASKS:
        for stage in ("classify", "instances_input_first", "instances_output_first"):
            prompts.append(load_template(PROMPTS, stage, mode).render(instruction=task))
    reqs = [Request(p, 0.0, 1.0, 300, stop=STOPS, seed=7) for p in prompts]
    reqs[0] = dataclasses.replace(reqs[0], max_tokens=3)
    return [(cid(n + (0 if mode == "chat" else 100)), r) for n, r in enumerate(reqs)]


def model(provider: str, api: Handle) -> ApiModel:
    return ApiModel(provider=provider, model="fake-model", timeout_s=10,
                    base_url=api.url if provider == "anthropic" else api.url + "/v1")


def batch_api(provider: str, api: Handle) -> BatchApi:
    return make_batch_api(model(provider, api), Secret(KEY), PREFIXES, stops=STOPS)


async def until_ended(batches: BatchApi, batch_id: str) -> BatchState:
    for _ in range(400):
        state = await batches.state(batch_id)
        if state.status != "in_progress":
            return state
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not end")


async def batched(batches: BatchApi, items: list[tuple[str, Request]]) -> tuple[
        str, BatchState, dict[str, Any]]:
    batch_id = await batches.submit(items)
    state = await until_ended(batches, batch_id)
    return batch_id, state, await batches.results(batch_id)


@pytest.fixture
def api() -> Iterator[Handle]:
    with serve(seed=3) as handle:
        yield handle


PROVIDERS = ["anthropic", "openai"]


def batches_of(provider: str) -> list[list[tuple[str, Request]]]:
    """Anthropic takes chat and completion prompts in one batch; OpenAI needs one batch per
    endpoint."""
    if provider == "anthropic":
        return [requests("chat") + requests("completion")]
    return [requests("chat"), requests("completion")]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_batched_answers_equal_the_online_answers(provider: str) -> None:
    """Two servers with the same seed, one asked online and one in batches, in the same order
    (so the prompt cache fills alike): the same answers, tokens and server-side counts."""
    with serve(seed=3) as online_api, serve(seed=3) as batch_server:
        async def scenario() -> tuple[dict[str, Completion], dict[str, Any], list[str]]:
            online = make_provider(model(provider, online_api), Secret(KEY),
                                   lambda _: None, PREFIXES)
            batches = batch_api(provider, batch_server)
            expected, got, ids = {}, {}, []
            for items in batches_of(provider):
                for custom_id, req in items:
                    expected[custom_id] = await online.complete(req)
                batch_id, state, results = await batched(batches, items)
                assert state.status == "ended"
                assert state.counts == {"succeeded": len(items), "errored": 0, "expired": 0,
                                        "cancelled": 0, "processing": 0}
                got.update(results)
                ids.append(batch_id)
            await batches.close()
            await online.http.aclose()
            return expected, got, ids

        expected, got, ids = asyncio.run(scenario())
        online_stats, batch_stats = online_api.stats(), batch_server.stats()
        with anthropic.Anthropic(base_url=batch_server.url, api_key=KEY) as client:
            raw = [line.result.message.content[0].text for line in
                   client.messages.batches.results(ids[0])] if provider == "anthropic" else []
    assert got.keys() == expected.keys()
    assert all(item.failure == "" and item.message == "" for item in got.values())
    answers = {k: dataclasses.replace(item.completion, latency_s=0.0) for k, item in got.items()}
    assert answers == {k: dataclasses.replace(c, latency_s=0.0) for k, c in expected.items()}
    # What makes this more than a tautology: answers cut at a stop the API was not sent (the
    # server's own answers ran past it), a truncated answer per batch, the prompt cache used.
    assert all("\n" not in c.text for c in answers.values())
    assert provider == "openai" or any("\n" in text for text in raw)
    assert sum(c.truncated for c in answers.values()) == 2  # one in each mode's requests
    assert provider == "openai" or sum(c.cache_read_tokens for c in answers.values()) > 0
    for count in ("by_stage", "prompt_tokens", "completion_tokens", "cache_read_tokens",
                  "cache_write_tokens"):
        assert batch_stats[count] == online_stats[count], count
    assert batch_stats["requests"] == 0 and online_stats["batches"] == {}
    assert batch_stats["batches"] == {provider: len(ids)}
    assert batch_stats["batch_submissions"] == dict.fromkeys(got, 1)
    assert batch_stats["batch_polls"] >= len(ids)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_errored_and_expired_items(provider: str) -> None:
    """Items fail at the server's rates, drawn from its seed: the same failures again on a
    fresh server; the batch ends (OpenAI: expired), its counts match its items."""
    def run() -> tuple[BatchState, dict[str, Any]]:
        with serve(seed=3, batch_error_rate=0.3, batch_expire_rate=0.3) as api:
            async def scenario() -> tuple[BatchState, dict[str, Any]]:
                batches = batch_api(provider, api)
                _, state, items = await batched(batches, requests("chat"))
                if provider == "openai":
                    raw = await batches.client.batches.retrieve(state.batch_id)
                    assert raw.status == "expired" and raw.output_file_id
                await batches.close()
                return state, items

            state, items = asyncio.run(scenario())
            assert api.stats()["batch_outcomes"] == {
                k: v for k, v in state.counts.items() if v}
            return state, items

    state, items = run()
    failures = Counter(item.failure or "succeeded" for item in items.values())
    assert state.status == "ended" and items.keys() == dict(requests("chat")).keys()
    assert {k: v for k, v in state.counts.items() if v} == failures
    assert failures["errored"] and failures["expired"] and failures["succeeded"]
    for item in items.values():
        assert (item.completion is None) == bool(item.failure)
        assert item.failure != "errored" or item.message
        assert KEY not in item.message
    again_state, again = run()
    assert {k: i.failure for k, i in again.items()} == {k: i.failure for k, i in items.items()}
    assert again_state.counts == state.counts


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_cancelled_batch_cancels_its_unrun_items(provider: str) -> None:
    """Results are refused until a batch ends; a cancel ends it with every unrun item
    cancelled; cancelling an ended batch changes nothing."""
    with serve(seed=3, batch_delay=60) as api:
        async def scenario() -> tuple[BatchState, dict[str, Any], dict[str, Any]]:
            batches = batch_api(provider, api)
            batch_id = await batches.submit(requests("chat"))
            with pytest.raises(BatchApiError, match="ended|finished processing"):
                await batches.results(batch_id)
            await batches.cancel(batch_id)
            state = await until_ended(batches, batch_id)
            items = await batches.results(batch_id)
            api.control(batch_delay=0)
            ended_id, _, answered = await batched(batches, requests("completion")[:2])
            await batches.cancel(ended_id)
            assert await batches.results(ended_id) == answered
            await batches.close()
            return state, items, answered

        state, items, answered = asyncio.run(scenario())
        stats = api.stats()
    n = len(requests("chat"))
    assert state.status == "ended" and state.counts["cancelled"] == n
    assert items.keys() == dict(requests("chat")).keys()
    assert {(i.completion, i.failure) for i in items.values()} == {(None, "cancelled")}
    assert all(not i.failure for i in answered.values())
    assert stats["batch_cancels"] == 2 and stats["batch_outcomes"] == {"cancelled": n,
                                                                        "succeeded": 2}


def test_an_openai_batch_mixing_chat_and_completion_is_refused(api: Handle) -> None:
    async def scenario() -> None:
        batches = batch_api("openai", api)
        with pytest.raises(ValueError, match="one endpoint"):
            await batches.submit(requests("chat")[:2] + requests("completion")[:2])
        with pytest.raises(ValueError, match="unique custom ids"):
            await batches.submit(requests("chat")[:1] * 2)
        await batches.close()

    asyncio.run(scenario())
    assert api.stats()["batches"] == {} and api.stats()["batch_bytes"] == []


def test_anthropic_needs_the_stops_it_cuts_answers_at(api: Handle) -> None:
    """Without the stage's stops, the results of a batch could not be cut as online answers
    are (a whitespace stop is never sent): such a batch is refused before it is sent."""
    async def scenario() -> None:
        batches = make_batch_api(model("anthropic", api), Secret(KEY), PREFIXES)
        with pytest.raises(ValueError, match="stops"):
            await batches.submit(requests("chat"))
        await batches.close()

    asyncio.run(scenario())
    assert api.stats()["batches"] == {}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_item_is_the_online_body_and_its_size_is_known(
        provider: str, api: Handle, monkeypatch: pytest.MonkeyPatch) -> None:
    """What goes on the wire: each batch item's body is the online request's body, and the
    sizes item_bytes gives add up to the body (Anthropic) or file (OpenAI) the server got."""
    sent: list[tuple[str, bytes]] = []
    real = WatchingTransport.handle_async_request

    async def record(self: WatchingTransport, request: httpx2.Request) -> httpx2.Response:
        if request.headers.get("content-type") == "application/json":
            sent.append((request.url.path, request.content))
        return await real(self, request)

    monkeypatch.setattr(WatchingTransport, "handle_async_request", record)
    items = batches_of(provider)[0]

    async def scenario() -> tuple[str, list[int]]:
        online = make_provider(model(provider, api), Secret(KEY), lambda _: None, PREFIXES)
        for _, req in items:
            await online.complete(req)
        await online.http.aclose()
        batches = batch_api(provider, api)
        batch_id = await batches.submit(items)
        await batches.close()
        return batch_id, [batches.item_bytes(custom_id, req) for custom_id, req in items]

    batch_id, sizes = asyncio.run(scenario())
    path = "/v1/messages" if provider == "anthropic" else "/v1/chat/completions"
    online = [json.loads(body) for p, body in sent if p == path]
    if provider == "anthropic":
        (create,) = [body for p, body in sent if p == "/v1/messages/batches"]
        lines = json.loads(create)["requests"]
        assert [line["params"] for line in lines] == online
        overhead = len(b'{"requests":[]}') + len(items) - 1  # the array's commas
    else:
        with openai.OpenAI(base_url=api.url + "/v1", api_key=KEY) as client:
            file_id = client.batches.retrieve(batch_id).input_file_id
            data = client.files.content(file_id).content
        lines = [json.loads(raw) for raw in data.splitlines()]
        assert [line["body"] for line in lines] == online
        assert {line["url"] for line in lines} == {path}
        overhead = 0
    assert len(online) == len(items)
    assert [line["custom_id"] for line in lines] == [custom_id for custom_id, _ in items]
    assert api.stats()["batch_bytes"] == [sum(sizes) + overhead]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_failed_call_says_its_status_and_counts_its_fault_never_the_key(
        provider: str, api: Handle) -> None:
    async def scenario() -> tuple[BatchApiError, dict[str, int]]:
        batches = batch_api(provider, api)
        with pytest.raises(BatchApiError) as caught:
            await batches.state("msgbatch_unknown" if provider == "anthropic"
                                else "batch_unknown")
        faults = batches.take_faults()
        assert batches.take_faults() == {}
        await batches.close()
        return caught.value, faults

    error, faults = asyncio.run(scenario())
    assert error.status == 404 and "no batch" in str(error) and KEY not in str(error)
    assert faults == {"http_404": 1}


def test_an_openai_batch_that_fails_validation(api: Handle) -> None:
    """OpenAI checks the whole file first: a failed batch says why, and its items (read from
    its input file, as no output names them) are errored with that message."""
    # U+2028 inside a string: a line separator to str.splitlines, not to JSONL.
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi\u2028you"}]}
    lines = [{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body},
             {"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": body}]
    with openai.OpenAI(base_url=api.url + "/v1", api_key=KEY) as client:
        upload = client.files.create(file=("in.jsonl", b"".join(
            json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines)),
            purpose="batch")
        batch_id = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions",
            completion_window="24h").id

    async def scenario() -> tuple[BatchState, dict[str, Any]]:
        batches = batch_api("openai", api)
        state = await batches.state(batch_id)
        items = await batches.results(batch_id)
        await batches.close()
        return state, items

    state, items = asyncio.run(scenario())
    assert state.status == "failed" and state.message.startswith("line 2: url must be")
    assert items == {"a": BatchItem(None, "errored", state.message),
                     "b": BatchItem(None, "errored", state.message)}
