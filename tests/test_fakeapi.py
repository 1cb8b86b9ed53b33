"""The fake OpenAI/Anthropic server, driven by the real SDK clients."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import anthropic
import openai
import pytest

from actors.method.parsing import (
    parse_classification,
    parse_input_first,
    parse_instructions,
    parse_output_first,
)
from actors.method.prompts import load_template, number_shots
from tests.conftest import ROOT
from tests.fakeapi import BUILTIN_INSTRUCTIONS, Handle, load_instructions, serve, serve_process

PROMPTS = ROOT / "prompts"
PROPOSE_STOPS = ["\n\n", "\n16", "16.", "16 ."]
SHOTS = number_shots([f"Write a short note about topic number {i}." for i in range(1, 9)])
SENTIMENT = "Classify the sentiment of the movie review as positive or negative."
POEM = "Write a poem about the sea at night."


@pytest.fixture
def api() -> Iterator[Handle]:
    with serve(seed=0) as handle:
        yield handle


def oai(api: Handle, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.url + "/v1", api_key="sk-test", **kwargs)


def claude(api: Handle, **kwargs: object) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=api.url, api_key="sk-ant-test", **kwargs)


def render(stage: str, mode: str, **values: str) -> str | list[dict[str, str]]:
    return load_template(PROMPTS, stage, mode).render(**values)


def complete(client: openai.OpenAI, prompt: str, **kwargs: object) -> openai.types.Completion:
    return client.completions.create(model="fake", prompt=prompt, **kwargs)


def chat(client: openai.OpenAI, messages: object, **kwargs: object) -> str:
    answer = client.chat.completions.create(model="fake", messages=messages, **kwargs)
    return answer.choices[0].message.content


def test_wire_formats_parse_in_the_sdks(api: Handle) -> None:
    client = oai(api)
    answer = client.chat.completions.create(
        model="gpt-x", messages=[{"role": "user", "content": "Hello there"}])
    assert answer.model == "gpt-x" and answer.object == "chat.completion"
    assert answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    batch = complete(client, ["First prompt.", "Second prompt, longer."])
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.usage.prompt_tokens == 4 + 6  # ceil(characters / 4) each
    assert [m.id for m in client.models.list()] == ["fake-model"]

    message = claude(api).messages.create(
        model="claude-x", max_tokens=50, system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    assert message.content[0].text and message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 3 + 1 and message.usage.cache_read_input_tokens == 0
    stats = api.stats()
    assert stats["requests"] == 3 and stats["ok"] == 3 and stats["by_stage"] == {"other": 3}
    assert len(stats["arrivals"]) == 3


def test_propose_continues_the_list_to_15(api: Handle) -> None:
    client = oai(api)
    text = complete(client, render("propose", "completion", shots=SHOTS), max_tokens=1024,
                    stop=PROPOSE_STOPS).choices[0].text
    assert text.startswith(" ") and "\n\n" not in text and "\n15. " in text
    chat_text = chat(client, render("propose", "chat", shots=SHOTS), stop=PROPOSE_STOPS)
    for answer in (text, chat_text):
        parsed = parse_instructions(answer, truncated=False)
        assert len(parsed.instructions) == 7 and len(set(parsed.instructions)) > 1
    assert api.stats()["by_stage"] == {"propose": 2}


@pytest.mark.parametrize("mode", ["completion", "chat"])
def test_classify_and_instances_parse(api: Handle, mode: str) -> None:
    client = oai(api)

    def ask(stage: str, instruction: str) -> str:
        prompt = render(stage, mode, instruction=instruction)
        if mode == "chat":
            return chat(client, prompt, max_tokens=512)
        return complete(client, prompt, max_tokens=512).choices[0].text

    assert parse_classification(ask("classify", SENTIMENT)) is True
    assert parse_classification(ask("classify", POEM)) is False
    assert ask("classify", POEM) == ask("classify", POEM)

    labelled = parse_output_first(ask("instances_output_first", SENTIMENT), truncated=False)
    assert [i.output for i in labelled] == ["Positive", "Negative"]
    assert all(i.input and not i.input.endswith(":") for i in labelled)

    examples = parse_input_first(ask("instances_input_first", POEM), truncated=False)
    assert 2 <= len(examples) <= 3
    for inst in examples:
        assert inst.input and inst.output and inst.input != inst.output
        assert 5 <= len(inst.input.split()) <= 60
    other = parse_input_first(ask("instances_input_first", SENTIMENT), truncated=False)
    assert other != examples
    assert api.stats()["by_stage"] == {"classify": 4, "instances": 3}


def test_stop_and_max_tokens(api: Handle) -> None:
    client = oai(api)
    prompt = render("propose", "completion", shots=SHOTS)
    full = complete(client, prompt).choices[0].text
    cut = complete(client, prompt, stop=["\n11.", "\n12."]).choices[0]
    assert cut.finish_reason == "stop" and full.startswith(cut.text) and "\n11." not in cut.text
    assert "\n10. " in cut.text
    short = complete(client, prompt, max_tokens=5).choices[0]
    assert short.finish_reason == "length" and short.text == full[:20]
    assert chat(client, [{"role": "user", "content": "hi"}], max_completion_tokens=1) != ""

    messages = render("propose", "chat", shots=SHOTS)
    system, user = messages[0]["content"], messages[1:]
    c = claude(api)
    stopped = c.messages.create(model="m", max_tokens=1024, system=system, messages=user,
                                stop_sequences=["\n12."])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "\n12."
    assert "\n11. " in stopped.content[0].text and "\n12." not in stopped.content[0].text
    capped = c.messages.create(model="m", max_tokens=3, system=system, messages=user)
    assert capped.stop_reason == "max_tokens" and len(capped.content[0].text) == 12
    assert capped.usage.output_tokens == 3


@pytest.mark.parametrize(("kind", "error"), [
    ("429", openai.RateLimitError),
    ("500", openai.InternalServerError),
    ("timeout", openai.APITimeoutError),
])
def test_openai_error_faults(api: Handle, kind: str, error: type[Exception]) -> None:
    api.control(hang_s=5, retry_after=7)
    api.inject(kind, 1)
    client = oai(api, max_retries=0, timeout=0.3)
    with pytest.raises(error) as caught:
        chat(client, [{"role": "user", "content": "hi"}])
    if kind == "429":
        assert caught.value.response.headers["retry-after"] == "7"
        assert caught.value.body["code"] == "rate_limit_exceeded"
    assert chat(client, [{"role": "user", "content": "hi"}])  # only the next request
    time.sleep(0.1)  # a timed-out request's handler is cancelled when the client goes
    stats = api.stats()
    assert stats["faults"] == {kind: 1} and stats["ok"] == 1 and stats["in_flight"] == 0


@pytest.mark.parametrize(("kind", "error"), [
    ("429", anthropic.RateLimitError),
    ("500", anthropic.InternalServerError),
    ("timeout", anthropic.APITimeoutError),
])
def test_anthropic_error_faults(api: Handle, kind: str, error: type[Exception]) -> None:
    api.control(hang_s=5)
    api.inject(kind, 1)
    with pytest.raises(error) as caught:
        claude(api, max_retries=0, timeout=0.3).messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    if kind != "timeout":
        body = caught.value.body
        assert body["type"] == "error"
        assert body["error"]["type"] == {"429": "rate_limit_error", "500": "api_error"}[kind]


def test_truncate_and_garbage_faults(api: Handle) -> None:
    client = oai(api)
    prompt = render("classify", "completion", instruction=SENTIMENT)
    propose = render("propose", "completion", shots=SHOTS)
    full = complete(client, propose).choices[0].text
    api.inject("truncate", 1)
    cut = complete(client, propose).choices[0]
    assert cut.finish_reason == "length" and cut.text == full[: len(full) // 2]
    assert parse_instructions(cut.text, truncated=True).dropped_reason == "truncated"

    api.inject("garbage", 3)
    soup = complete(client, prompt).choices[0]
    assert soup.finish_reason == "stop" and parse_classification(soup.text) is None
    assert not any(ch.isalnum() for ch in soup.text)
    assert parse_output_first(complete(client, prompt).choices[0].text, False) == []
    message = claude(api).messages.create(
        model="m", max_tokens=100, messages=[{"role": "user", "content": prompt}])
    assert parse_classification(message.content[0].text) is None
    assert api.stats()["faults"] == {"truncate": 1, "garbage": 3}


def test_random_faults_follow_rate_and_weights(api: Handle) -> None:
    api.control(fault_rate=1.0, faults={"500": 1})
    client = oai(api, max_retries=0)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            chat(client, [{"role": "user", "content": "hi"}])
    api.control(fault_rate=0)
    assert chat(client, [{"role": "user", "content": "hi"}])
    assert api.stats()["faults"] == {"500": 3}


def test_sdk_retry_waits_for_retry_after(api: Handle) -> None:
    api.control(retry_after=0.5)
    api.inject("429", 1)
    started = time.monotonic()
    assert chat(oai(api, max_retries=1), [{"role": "user", "content": "hi"}])
    assert time.monotonic() - started >= 0.5
    arrivals = api.stats()["arrivals"]
    assert len(arrivals) == 2 and arrivals[1] - arrivals[0] >= 0.45


def test_anthropic_prompt_cache_accounting(api: Handle) -> None:
    system = [{"type": "text", "text": "Long shared instructions. " * 100,
               "cache_control": {"type": "ephemeral"}}]
    c = claude(api)

    def usage(question: str) -> anthropic.types.Usage:
        return c.messages.create(model="m", max_tokens=10, system=system,
                                 messages=[{"role": "user", "content": question}]).usage

    first, second = usage("Task: a\nIs it classification?"), usage("What else?")
    assert first.cache_creation_input_tokens == 650 and first.cache_read_input_tokens == 0
    assert second.cache_read_input_tokens == 650 and second.cache_creation_input_tokens == 0
    assert second.input_tokens == 3
    stats = api.stats()
    assert stats["cache_write_tokens"] == 650 and stats["cache_read_tokens"] == 650


def test_rpm_limit(api: Handle) -> None:
    api.control(rpm=5)
    client = oai(api, max_retries=0)
    for _ in range(5):
        assert chat(client, [{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client, [{"role": "user", "content": "hi"}])
    assert 59 <= int(caught.value.response.headers["retry-after"]) <= 60
    assert api.stats()["faults"] == {"rpm_429": 1}


def test_concurrent_requests_are_held_together(api: Handle) -> None:
    api.control(latency=0.3)

    async def burst() -> list[str]:
        client = openai.AsyncOpenAI(base_url=api.url + "/v1", api_key="sk-test")
        async with client:
            answers = await asyncio.gather(*(
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"q{i}"}])
                for i in range(20)))
        return [a.choices[0].message.content for a in answers]

    started = time.monotonic()
    assert len(asyncio.run(burst())) == 20
    assert time.monotonic() - started < 2
    stats = api.stats()
    assert stats["max_concurrency"] >= 18 and stats["in_flight"] == 0


def test_control_checks_options_and_reset_keeps_them(api: Handle) -> None:
    for bad in ({"fault_rate": 2}, {"flavour": 1}, {"faults": {"404": 1}}):
        with pytest.raises(ValueError):
            api.control(**bad)
    with pytest.raises(ValueError):
        api.inject("teapot", 1)
    assert api.control(latency=0.01)["latency"] == 0.01
    api.inject("500", 5)
    api.reset()
    assert api.stats()["requests"] == 0
    assert chat(oai(api, max_retries=0), [{"role": "user", "content": "hi"}])  # queue emptied
    assert api.control()["latency"] == 0.01


def test_batch_apis_in_the_sdks(api: Handle) -> None:
    """Both batch APIs as the SDKs read them: create, list, retrieve until ended, results
    (Anthropic's at the absolute results_url; OpenAI's in an output file), in order."""
    message = {"model": "m", "max_tokens": 50,
               "messages": [{"role": "user", "content": "Hello there"}]}
    with pytest.raises(ValueError):
        api.control(batch_error_rate=1.5)
    client = claude(api, max_retries=0)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[{"custom_id": "no spaces", "params": message}])
    created = client.messages.batches.create(
        requests=[{"custom_id": f"r{i}", "params": message} for i in range(3)])
    assert created.processing_status == "in_progress" and created.request_counts.processing == 3
    assert [b.id for b in client.messages.batches.list()] == [created.id]
    time.sleep(0.25)  # the default batch_delay is 0.2 s
    ended = client.messages.batches.retrieve(created.id)
    assert ended.processing_status == "ended" and ended.request_counts.succeeded == 3
    assert ended.results_url == f"{api.url}/v1/messages/batches/{created.id}/results"
    results = list(client.messages.batches.results(created.id))
    assert [r.custom_id for r in results] == ["r0", "r1", "r2"]
    assert all(r.result.type == "succeeded" and r.result.message.content[0].text
               for r in results)

    openai_client = oai(api, max_retries=0)
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": "m", "prompt": f"Prompt {i}."}} for i in range(2)]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    upload = openai_client.files.create(file=("in.jsonl", data), purpose="batch")
    assert openai_client.files.retrieve(upload.id).bytes == len(data)
    batch = openai_client.batches.create(input_file_id=upload.id, endpoint="/v1/completions",
                                         completion_window="24h", metadata={"run": "x"})
    assert batch.status == "in_progress" and batch.metadata == {"run": "x"}
    assert [b.id for b in openai_client.batches.list()] == [batch.id]
    time.sleep(0.25)
    done = openai_client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 2
    assert done.error_file_id is None
    output = openai_client.files.content(done.output_file_id).content.splitlines()
    answers = [json.loads(line) for line in output]
    assert [a["custom_id"] for a in answers] == ["q0", "q1"]
    assert all(a["response"]["status_code"] == 200
               and a["response"]["body"]["choices"][0]["text"] for a in answers)
    stats = api.stats()
    assert stats["batches"] == {"anthropic": 1, "openai": 1} and stats["batch_items"] == 5
    assert stats["by_stage"] == {"other": 5} and stats["requests"] == 0
    assert stats["batch_submissions"] == dict.fromkeys(["r0", "r1", "r2", "q0", "q1"], 1)


def test_secrets_are_not_echoed(api: Handle) -> None:
    key = "sk-do-not-echo-1234"
    client = openai.OpenAI(base_url=api.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages="not a list")
    assert key not in json.dumps(caught.value.body) + json.dumps(api.stats())


def test_builtin_instructions_without_shared_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.fakeapi.DEFAULT_ALPACA", ROOT / "no-such-file.jsonl")
    assert load_instructions.__wrapped__(None) == BUILTIN_INSTRUCTIONS
    assert len(BUILTIN_INSTRUCTIONS) >= 50


def test_process_form_serves_and_stops_on_sigterm() -> None:
    with serve_process(latency=0.05, seed=3, faults={"500": 1, "timeout": 2}) as api:
        assert api.url.startswith("http://127.0.0.1:")
        assert api.control(retry_after=2)["faults"] == {"500": 1.0, "timeout": 2.0}
        api.inject("429", 1)
        with pytest.raises(openai.RateLimitError):
            chat(oai(api, max_retries=0), [{"role": "user", "content": "hi"}])
        assert api.stats()["faults"] == {"429": 1}
        api.process.send_signal(signal.SIGTERM)
        assert api.process.wait(10) == 0


def test_cli_prints_one_line_first() -> None:
    command = [sys.executable, "-m", "tests.fakeapi", "--port", "0", "--latency", "0.5",
               "--fault-rate", "0.2", "--seed", "0", "--rpm", "100", "--faults", str({"429": 1})]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline()
            assert line.startswith("listening on http://127.0.0.1:") and line.endswith("\n")
            options = Handle(line.split()[-1]).control()
            assert options["rpm"] == 100 and options["faults"] == {"429": 1.0}
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(10) == 0
