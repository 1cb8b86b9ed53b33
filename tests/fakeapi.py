"""A local fake of the OpenAI and Anthropic HTTP APIs, for tests and benchmarks.

The remote clients, their retries and rate limits must be tested without a network, a key or a
bill. This server speaks both wire formats on 127.0.0.1 only, answers each Self-Instruct stage
(propose, classify, instances) the way a real model would, so that parsing, filters and dedup
behave as in life, and injects faults (429, 500, hangs, truncated or garbage answers, a
requests-per-minute limit) at random or on command. It is async (aiohttp): hundreds of requests
held for a fixed latency cost next to nothing.

    with serve(latency=0.5, fault_rate=0.1) as api:   # a thread of this process
        OpenAI(base_url=api.url + "/v1", api_key="x"); api.inject("429", 2); api.stats()

    python -m tests.fakeapi --port 0 --latency 0.5    # a process; prints "listening on URL"

Either form is controlled over HTTP: POST /_control, POST /_inject, GET /_stats, POST /_reset.
Answers are a function of (seed, prompt), so they do not depend on arrival order; faults are
drawn in arrival order from a generator seeded by `seed`.

Both batch APIs are spoken too: Anthropic's Message Batches and OpenAI's file upload, Batch and
output file. A batch ends `batch_delay` seconds after it is created; its items are then
answered as online requests are, except the fractions `batch_error_rate` (errored) and
`batch_expire_rate` (left unprocessed: the batch expired), drawn in order from a generator of
their own seeded by `seed`. A batch cancelled before it ends has all its items cancelled.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import hashlib
import json
import math
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ALPACA = ROOT.parent / "shared/data/alpaca/alpaca_instructions.jsonl"
HOST = "127.0.0.1"
FAULT_KINDS = ("429", "500", "timeout", "truncate", "garbage")
PROPOSE_LAST = 15  # propose answers continue the numbered list through this number
WINDOW_S = 60.0  # the rpm limit's sliding window


# ---------------------------------------------------------------------------------- options


@dataclass
class Options:
    latency: float = 0.0
    jitter: float = 0.0
    fault_rate: float = 0.0
    faults: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 1.0))
    retry_after: float = 1.0
    hang_s: float = 30.0
    rpm: int | None = None
    seed: int = 0
    alpaca: str | None = None
    batch_delay: float = 0.2  # seconds from a batch's creation to its end
    batch_error_rate: float = 0.0  # fraction of a batch's items that come back errored
    batch_expire_rate: float = 0.0  # fraction left unprocessed: the batch expires

    def update(self, **changes: Any) -> None:
        unknown = changes.keys() - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            setattr(self, name, _coerce(name, value))


def _coerce(name: str, value: Any) -> Any:
    """One option's value, checked; strings are accepted for all (the command line's form)."""
    if name == "faults":
        return _fault_weights(value)
    if name == "rpm":
        return int(value) if value else None  # 0 or none: no limit
    if name == "alpaca":
        return str(value) if value else None
    if name == "seed":
        return int(value)
    number = float(value)
    if not 0 <= number <= (1 if name.endswith("_rate") else math.inf):
        raise ValueError(f"{name} out of range: {value!r}")
    return number


def _fault_weights(value: Any) -> dict[str, float]:
    """`{"429": 1, "500": 2}`, its text (JSON or Python) or `"429=1,500=2"`; kinds left out
    get weight 0."""
    if isinstance(value, str) and value.strip().startswith("{"):
        value = ast.literal_eval(value)
    elif isinstance(value, str):
        value = dict(item.split("=", 1) for item in value.split(",") if item.strip())
    weights = {str(kind).strip(): float(weight) for kind, weight in dict(value).items()}
    unknown = weights.keys() - set(FAULT_KINDS)
    if unknown or min(weights.values(), default=-1) < 0 or not any(weights.values()):
        raise ValueError(f"faults must weigh some of {FAULT_KINDS} with weights >= 0: {value!r}")
    return weights


# ---------------------------------------------------------------------------------- content


BUILTIN_INSTRUCTIONS = (
    "Give three tips for staying healthy during the winter.",
    "Explain the difference between weather and climate.",
    "Write a haiku about a quiet morning in the mountains.",
    "Classify the following movie review as positive or negative.",
    "Translate the sentence into French.",
    "Summarize the main idea of the paragraph in one sentence.",
    "Suggest a name for a new brand of organic tea.",
    "Write a Python function that counts the vowels in a string.",
    "Is the following statement true or false?",
    "Describe the process of photosynthesis in simple terms.",
    "List four renewable sources of energy.",
    "Rewrite the sentence so that it sounds more formal.",
    "Determine whether the email is spam or not spam.",
    "Generate a catchy slogan for a bicycle repair shop.",
    "Explain why the moon has phases.",
    "Convert the temperature from Fahrenheit to Celsius.",
    "Write a short story about a robot who learns to paint.",
    "Identify the main character in the passage.",
    "Give an example of a metaphor and explain it.",
    "Compose a polite reply declining a job offer.",
    "Sort the list of numbers in ascending order.",
    "Find the synonym of the given word.",
    "Which of the following animals is a mammal?",
    "Create a shopping list for a vegetarian dinner party.",
    "Explain how a bill becomes a law in the United States.",
    "Detect the sentiment of the tweet.",
    "Write a SQL query that returns all customers from Canada.",
    "Propose three questions to ask at the end of a job interview.",
    "Describe your ideal weekend in a few sentences.",
    "Correct the grammar mistakes in the sentence.",
    "Calculate the area of a circle with a radius of 5 cm.",
    "Label the news headline with its category: sports, politics, or technology.",
    "Write a limerick about a cat who loves pizza.",
    "Explain the rules of chess to a beginner.",
    "Generate a list of five creative uses for a paper clip.",
    "Give advice to someone who is nervous about public speaking.",
    "Paraphrase the quote in your own words.",
    "Design a simple weekly workout plan for a beginner.",
    "Tell me whether the two sentences mean the same thing.",
    "Outline the steps to change a car tire.",
    "Write a product description for noise-cancelling headphones.",
    "Explain what a black hole is to a ten-year-old.",
    "Extract the names of all the people mentioned in the text.",
    "Recommend three books for someone who likes science fiction.",
    "Answer the riddle and explain your reasoning.",
    "Write a thank-you note to a teacher.",
    "Compare cats and dogs as pets.",
    "Identify if the sentence is a question or a statement.",
    "Plan a three-day trip to Rome on a small budget.",
    "Explain the concept of supply and demand.",
    "Write a regular expression that matches an email address.",
    "Describe the smell of fresh bread.",
    "Brainstorm names for a podcast about history.",
    "Turn the list of facts into a short paragraph.",
    "Predict what will happen next in the story.",
    "Explain the meaning of the idiom 'break the ice'.",
    "Write a tweet announcing the opening of a new library.",
    "Rate the difficulty of the math problem as easy, medium, or hard.",
    "Create a riddle whose answer is 'a shadow'.",
    "Give step-by-step instructions for brewing a cup of green tea.",
)

_FILLER = (
    "the", "a", "of", "and", "to", "in", "for", "with", "that", "this", "about", "each", "some",
    "new", "small", "local", "people", "data", "text", "customer", "city", "team", "story",
    "review", "friend", "school", "market", "garden", "river", "music", "report", "morning",
    "product", "price", "weather", "book", "coffee", "travel", "health", "water", "family",
    "project", "history",
)
_CLASSIFY_HINTS = (
    "classif", "whether", "positive", "negative", "sentiment", "true or false", "which of",
    "label", "categor", "spam", "identify if", "yes or no", "determine if",
)
_LABEL_HINTS = (
    ("sentiment", ("Positive", "Negative")),
    ("positive", ("Positive", "Negative")),
    ("spam", ("Spam", "Not spam")),
    ("true or false", ("True", "False")),
    ("yes or no", ("Yes", "No")),
)
_DEFAULT_LABELS = (("Yes", "No"), ("Relevant", "Irrelevant"), ("Formal", "Informal"))
_OR_PAIR = re.compile(r"\b([a-z]{3,}) or ([a-z]{3,})\b")
_GARBAGE = "!#$%&*+-/<=>?@^_|~()[]{};,'\"` "
_TRAILING_NUMBER = re.compile(r"(\d+)\s*\.\s*$")


def tokens(text: str) -> int:
    """The fake tokenizer: about four characters a token."""
    return max(1, math.ceil(len(text) / 4))


@lru_cache(maxsize=4)
def load_instructions(path: str | None = None) -> tuple[str, ...]:
    """Alpaca's instructions that fit on one line (a JSONL of {"id", "instruction"}), or the
    built-in list when no path is given and the shared data is absent."""
    file = Path(path) if path else DEFAULT_ALPACA
    if not path and not file.is_file():
        return BUILTIN_INSTRUCTIONS
    with file.open(encoding="utf-8") as lines:
        rows = (json.loads(line)["instruction"].strip() for line in lines if line.strip())
        usable = tuple(r for r in rows if r and "\n" not in r and "16" not in r and len(r) < 300)
    if not usable:
        raise ValueError(f"{file}: no usable instructions")
    return usable


def detect(text: str) -> str:
    """Which template a prompt was rendered from: propose, classify, output_first,
    input_first, one of the judges' (judge_quality, judge_grade, judge_pairwise) or other."""
    for kind, mark in JUDGE_MARKS.items():
        if mark in text:
            return kind
    if "Come up with a series of tasks" in text:
        return "propose"
    if "Is it classification?" in text:
        return "classify"
    if "Class label:" in text:
        return "output_first"
    if "Come up with examples for the following tasks" in text or "Example 1\nInput:" in text:
        return "input_first"
    return "other"


def stage_of(kind: str) -> str:
    if kind.startswith("judge"):
        return "judge"
    return "instances" if kind in ("output_first", "input_first") else kind


def last_task(text: str) -> str:
    return text.rsplit("Task:", 1)[-1].split("Is it classification?", 1)[0].strip()


def compose(prompt: str, chat: bool, seed: int, pool: tuple[str, ...]) -> str:
    """What a model would answer to this prompt; a function of (seed, prompt) only."""
    rng = random.Random(hashlib.sha256(f"{seed}\0{prompt}".encode()).digest())
    kind = detect(prompt)
    lead = "" if chat else {"propose": " ", "classify": " "}.get(kind, "\n")
    if kind == "propose":
        return lead + propose(prompt, rng, pool)
    if kind == "classify":
        return lead + classify(last_task(prompt))
    if kind == "output_first":
        return lead + output_first(last_task(prompt), rng)
    if kind == "input_first":
        return lead + input_first(last_task(prompt), rng)
    if kind.startswith("judge"):
        return judge(kind, rng)
    return sentence(rng, _FILLER, 5, 12)


# The judges' prompts (actors/tools/quality.py, prompts/judge_*.chat.txt), by a line each holds.
JUDGE_MARKS = {"judge_quality": "Does the instruction describe a valid task?",
               "judge_grade": "Grade: <A, B, C or D>",
               "judge_pairwise": "Better: <1, 2 or tie>"}


def judge(kind: str, rng: random.Random) -> str:
    """A judge's answer in the format its prompt asks for, the verdicts drawn at random."""
    if kind == "judge_quality":
        return "\n".join(f"{i}. {rng.choice(('Yes', 'No'))}" for i in range(1, 5))
    verdict = (f"Grade: {rng.choice('ABCD')}" if kind == "judge_grade"
               else f"Better: {rng.choice(('1', '2', 'tie'))}")
    return f"Reason: {sentence(rng, _FILLER, 6, 14)}\n{verdict}"


def propose(prompt: str, rng: random.Random, pool: tuple[str, ...]) -> str:
    """Continue the numbered list after its trailing 'N.' through PROPOSE_LAST, one line each."""
    match = _TRAILING_NUMBER.search(prompt)
    first = int(match.group(1)) if match else 1
    picks = [rng.choice(pool) for _ in range(first, max(first, PROPOSE_LAST) + 1)]
    text = picks[0] + "".join(f"\n{n}. {inst}" for n, inst in enumerate(picks[1:], first + 1))
    return text if match else f"{first}. {text}"


def classify(task: str) -> str:
    return "Yes" if any(hint in task.lower() for hint in _CLASSIFY_HINTS) else "No"


def output_first(task: str, rng: random.Random) -> str:
    words = _words(task)
    return "\n".join(
        f"Class label: {label}\nInput: {sentence(rng, words, 5, 40)}" for label in labels(task, rng)
    )


def input_first(task: str, rng: random.Random) -> str:
    words = _words(task)
    return "\n".join(
        f"Example {n}\nInput: {sentence(rng, words, 5, 40)}\nOutput: {sentence(rng, words, 5, 20)}"
        for n in range(1, rng.randint(2, 3) + 1)
    )


def labels(task: str, rng: random.Random) -> tuple[str, str]:
    lower = task.lower()
    for hint, pair in _LABEL_HINTS:
        if hint in lower:
            return pair
    match = _OR_PAIR.search(lower)
    if match and "not" not in match.groups() and match.group(1) != match.group(2):
        return match.group(1).capitalize(), match.group(2).capitalize()
    return rng.choice(_DEFAULT_LABELS)


def sentence(rng: random.Random, words: list[str] | tuple[str, ...], low: int, high: int) -> str:
    return " ".join(rng.choices(words, k=rng.randint(low, high))).capitalize() + "."


def garbage(rng: random.Random) -> str:
    """Symbol soup: no letters or digits, so no list, label, Yes/No or Input/Output in it."""
    return "".join(rng.choices(_GARBAGE, k=rng.randint(40, 160))).strip() or "~"


def _words(task: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Za-z']{3,}", task)] + list(_FILLER)


@dataclass(frozen=True)
class Answer:
    text: str
    reason: str  # "stop" or "length"
    stop_sequence: str | None = None


def finish(text: str, stops: list[str], max_tokens: int | None, fault: str | None) -> Answer:
    """Apply the stop sequences, then max_tokens, then a truncate fault, as a server would."""
    hits = [(text.find(s), s) for s in stops if s and s in text]
    index, stop = min(hits) if hits else (len(text), None)
    text = text[:index]
    if max_tokens is not None and len(text) > max_tokens * 4:
        return Answer(text[: max_tokens * 4], "length")
    if fault == "truncate":
        return Answer(text[: len(text) // 2], "length")
    return Answer(text, "stop", stop)


# ---------------------------------------------------------------------------------- requests


@dataclass
class Call:
    """What one model request asks for, whatever its wire format."""

    model: str
    prompts: list[str]  # one answer each
    chat: bool
    stops: list[str]
    max_tokens: int | None
    prompt_tokens: int
    blocks: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # Anthropic's


def _text(content: Any) -> str:
    """A message's content: a string or a list of parts, of which the text ones count."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def _stops(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else list(value or [])
    if not all(isinstance(s, str) for s in stops):
        raise ValueError("stop sequences must be strings")
    return stops


def _max_tokens(value: Any) -> int | None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError("max_tokens must be a positive integer")
    return value


def openai_chat_call(body: dict[str, Any]) -> Call:
    texts = [_text(m["content"] or "") for m in body["messages"]]
    return Call(
        model=body["model"], prompts=["\n\n".join(texts)], chat=True,
        stops=_stops(body.get("stop")),
        max_tokens=_max_tokens(body.get("max_completion_tokens") or body.get("max_tokens")),
        prompt_tokens=sum(tokens(t) for t in texts),
    )


def openai_completion_call(body: dict[str, Any]) -> Call:
    prompt = body["prompt"]
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompt must be a string or a list of strings")
    return Call(
        model=body["model"], prompts=prompts, chat=False, stops=_stops(body.get("stop")),
        max_tokens=_max_tokens(body.get("max_tokens")),
        prompt_tokens=sum(tokens(p) for p in prompts),
    )


def anthropic_call(body: dict[str, Any]) -> Call:
    system = body.get("system") or []
    blocks = [("system", b) for b in _blocks(system)]
    blocks += [(m["role"], b) for m in body["messages"] for b in _blocks(m["content"])]
    texts = [b.get("text", "") for _, b in blocks]
    if body.get("max_tokens") is None:
        raise ValueError("max_tokens: Field required")
    return Call(
        model=body["model"], prompts=["\n\n".join(texts)], chat=True,
        stops=_stops(body.get("stop_sequences")), max_tokens=_max_tokens(body["max_tokens"]),
        prompt_tokens=sum(tokens(t) for t in texts), blocks=blocks,
    )


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)]


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def openai_usage(call: Call, answers: list[Answer]) -> dict[str, int]:
    completion = sum(tokens(a.text) for a in answers)
    return {"prompt_tokens": call.prompt_tokens, "completion_tokens": completion,
            "total_tokens": call.prompt_tokens + completion}


def openai_chat_body(call: Call, answers: list[Answer]) -> dict[str, Any]:
    choices = [
        {"index": i, "message": {"role": "assistant", "content": a.text, "refusal": None},
         "logprobs": None, "finish_reason": a.reason}
        for i, a in enumerate(answers)
    ]
    return {"id": _new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
            "model": call.model, "choices": choices, "usage": openai_usage(call, answers)}


def openai_completion_body(call: Call, answers: list[Answer]) -> dict[str, Any]:
    choices = [{"index": i, "text": a.text, "logprobs": None, "finish_reason": a.reason}
               for i, a in enumerate(answers)]
    return {"id": _new_id("cmpl-"), "object": "text_completion", "created": int(time.time()),
            "model": call.model, "choices": choices, "usage": openai_usage(call, answers)}


def anthropic_body(call: Call, answer: Answer, cached: tuple[int, int]) -> dict[str, Any]:
    read, write = cached
    reason = "max_tokens" if answer.reason == "length" else (
        "stop_sequence" if answer.stop_sequence else "end_turn")
    usage = {"input_tokens": call.prompt_tokens - read - write,
             "output_tokens": tokens(answer.text),
             "cache_creation_input_tokens": write, "cache_read_input_tokens": read}
    return {"id": _new_id("msg_"), "type": "message", "role": "assistant", "model": call.model,
            "content": [{"type": "text", "text": answer.text}], "stop_reason": reason,
            "stop_sequence": answer.stop_sequence, "usage": usage}


_ERRORS = {  # kind: (OpenAI type, OpenAI code, Anthropic type)
    "rate_limit": ("requests", "rate_limit_exceeded", "rate_limit_error"),
    "server": ("server_error", None, "api_error"),
    "invalid": ("invalid_request_error", None, "invalid_request_error"),
    "not_found": ("invalid_request_error", None, "not_found_error"),
}


def error_body(api: str, kind: str, message: str) -> dict[str, Any]:
    openai_type, code, anthropic_type = _ERRORS[kind]
    if api == "anthropic":
        return {"type": "error", "error": {"type": anthropic_type, "message": message}}
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}


def error_response(api: str, status: int, kind: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(api, kind, message), status=status, headers=headers)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# ---------------------------------------------------------------------------------- batches


BATCH_ENDPOINTS = {"/v1/chat/completions": openai_chat_call,
                   "/v1/completions": openai_completion_call}
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
UNPROCESSED = {  # kind: (OpenAI error code, message)
    "expired": ("batch_expired",
                "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "The batch was cancelled before this request executed."),
}


@dataclass
class Batch:
    """One batch of either API: its requests, when it ends and, once ended, each outcome."""

    id: str
    api: str  # "anthropic" or "openai"
    requests: list[tuple[str, Any]]  # (custom id, the request's body)
    created: float
    ends: float  # its deadline: the items are answered (or expire) then
    endpoint: str = ""  # OpenAI's, with its input file and metadata
    input_file_id: str = ""
    metadata: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)  # OpenAI: validation failed
    cancel_at: float | None = None
    ended: float | None = None
    # custom id: (succeeded | errored | expired | cancelled, the answer or (status, error body))
    outcomes: dict[str, tuple[str, Any]] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None

    def counts(self) -> Counter[str]:
        return Counter(kind for kind, _ in self.outcomes.values())

    def end(self) -> str:
        """How it ended: cancelled, expired (some items never ran) or completed."""
        counts = self.counts()
        return ("cancelled" if self.cancel_at is not None
                else "expired" if counts["expired"] else "completed")


@dataclass
class StoredFile:
    id: str
    data: bytes
    filename: str
    purpose: str
    created: float


def _rfc3339(t: float | None) -> str | None:
    return None if t is None else (
        datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z"))


def _unix(t: float | None) -> int | None:
    return None if t is None else int(t)


def anthropic_batch_view(b: Batch, base_url: str) -> dict[str, Any]:
    """A MessageBatch."""
    counts, ended = b.counts(), b.ended is not None
    status = "ended" if ended else "in_progress" if b.cancel_at is None else "canceling"
    return {
        "id": b.id, "type": "message_batch", "processing_status": status,
        "request_counts": {"processing": 0 if ended else len(b.requests),
                           "succeeded": counts["succeeded"], "errored": counts["errored"],
                           "canceled": counts["cancelled"], "expired": counts["expired"]},
        "created_at": _rfc3339(b.created), "expires_at": _rfc3339(b.ends),
        "ended_at": _rfc3339(b.ended), "cancel_initiated_at": _rfc3339(b.cancel_at),
        "archived_at": None,
        "results_url": f"{base_url}/v1/messages/batches/{b.id}/results" if ended else None,
    }


def anthropic_result_line(custom_id: str, kind: str, body: Any) -> dict[str, Any]:
    """A MessageBatchIndividualResponse: one line of the results."""
    if kind == "succeeded":
        result = {"type": "succeeded", "message": body}
    elif kind == "errored":
        result = {"type": "errored", "error": body[1]}
    else:
        result = {"type": "canceled" if kind == "cancelled" else kind}
    return {"custom_id": custom_id, "result": result}


def openai_batch_view(b: Batch) -> dict[str, Any]:
    """An OpenAI Batch."""
    counts, ended = b.counts(), b.ended
    if b.errors:
        status = "failed"
    elif ended is not None:
        status = b.end()
    else:
        status = "in_progress" if b.cancel_at is None else "cancelling"
    return {
        "id": b.id, "object": "batch", "endpoint": b.endpoint,
        "errors": {"object": "list", "data": b.errors} if b.errors else None,
        "input_file_id": b.input_file_id, "completion_window": "24h", "status": status,
        "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
        "created_at": _unix(b.created), "expires_at": _unix(b.ends),
        "in_progress_at": None if b.errors else _unix(b.created),
        "failed_at": _unix(b.created) if b.errors else None,
        "finalizing_at": _unix(ended), "cancelling_at": _unix(b.cancel_at),
        "completed_at": _unix(ended) if status == "completed" else None,
        "expired_at": _unix(ended) if status == "expired" else None,
        "cancelled_at": _unix(ended) if status == "cancelled" else None,
        "request_counts": {"total": len(b.requests), "completed": counts["succeeded"],
                           "failed": counts["errored"]},
        "metadata": b.metadata,
    }


def openai_output_line(custom_id: str, kind: str, body: Any) -> dict[str, Any]:
    """One line of an output file (an answer) or of an error file (anything else)."""
    line: dict[str, Any] = {"id": _new_id("batch_req_"), "custom_id": custom_id,
                            "response": None, "error": None}
    if kind in UNPROCESSED:
        code, message = UNPROCESSED[kind]
        line["error"] = {"code": code, "message": message}
    else:
        status, answer = (200, body) if kind == "succeeded" else body
        line["response"] = {"status_code": status, "request_id": _new_id("req_"),
                            "body": answer}
    return line


def file_view(f: StoredFile) -> dict[str, Any]:
    """A FileObject."""
    return {"id": f.id, "object": "file", "bytes": len(f.data), "created_at": int(f.created),
            "filename": f.filename, "purpose": f.purpose, "status": "processed"}


def openai_input(data: bytes, endpoint: str) -> tuple[list[tuple[str, Any]],
                                                       list[dict[str, Any]]]:
    """(requests, validation errors) of an input file, as OpenAI checks it before running."""
    requests: list[tuple[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, raw in enumerate(data.splitlines(), 1):
        try:
            line = json.loads(raw)
            problem = ("custom_id must be a string" if not isinstance(line["custom_id"], str)
                       else "duplicate custom_id" if line["custom_id"] in seen
                       else "method must be POST" if line["method"] != "POST"
                       else f"url must be the batch's endpoint {endpoint}"
                       if line["url"] != endpoint
                       else "body must be an object" if not isinstance(line["body"], dict)
                       else "")
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"not a request line: {exc}"
        if problem:
            errors.append({"code": "invalid_request", "message": f"line {n}: {problem}",
                           "param": None, "line": n})
            continue
        seen.add(line["custom_id"])
        requests.append((line["custom_id"], line["body"]))
    if not requests and not errors:
        errors.append({"code": "empty_file", "message": "the input file has no requests",
                       "param": None, "line": None})
    return requests, errors


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


# ---------------------------------------------------------------------------------- server


class FakeAPI:
    """The server's state: options, the fault queue, the prompt cache and the statistics.

    Used from its event loop only; other threads and processes go through the HTTP control
    endpoints (see Handle).
    """

    def __init__(self, **options: Any) -> None:
        self.options = Options()
        self.control(**options)
        self.reset()

    def control(self, **options: Any) -> dict[str, Any]:
        """Change options (the others keep their values); returns them all."""
        changed = Options(**asdict(self.options))
        changed.update(**options)
        self.pool = load_instructions(changed.alpaca)
        self.options = changed
        if "seed" in options:
            self._fault_rng = random.Random(changed.seed)
            self._batch_rng = random.Random(f"{changed.seed}\0batch")
        return asdict(self.options)

    def inject(self, kind: str, count: int = 1) -> None:
        """The next `count` model requests get fault `kind`, before any random fault."""
        if kind not in FAULT_KINDS or int(count) < 0:
            raise ValueError(f"kind must be one of {FAULT_KINDS} and count >= 0")
        if int(count):
            self._injected.append([kind, int(count)])

    def reset(self) -> None:
        """Zero the statistics, the fault queue, the rpm window and the prompt cache; forget
        the batches and files."""
        self._fault_rng = random.Random(self.options.seed)
        self._batch_rng = random.Random(f"{self.options.seed}\0batch")
        self._batches: dict[str, Batch] = {}
        self._files: dict[str, StoredFile] = {}
        self._injected: deque[list[Any]] = deque()
        self._window: deque[float] = deque()
        self._cache: set[str] = set()
        self._stats = {
            "requests": 0, "by_path": Counter(), "by_stage": Counter(), "faults": Counter(),
            "ok": 0, "bad_requests": 0, "max_concurrency": 0, "in_flight": 0, "arrivals": [],
            "arrivals_by_path": {},
            "prompt_tokens": 0, "completion_tokens": 0, "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            # batches created per API, their items, each custom id's submissions, the items'
            # outcomes, batch retrieves (polls) and cancels, each batch's body or file size
            "batches": Counter(), "batch_items": 0, "batch_submissions": Counter(),
            "batch_outcomes": Counter(), "batch_polls": 0, "batch_cancels": 0,
            "batch_bytes": [],
        }

    def stats(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self._stats.items()}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.add_routes([
            web.post("/v1/chat/completions", self._route("openai", openai_chat_call)),
            web.post("/v1/completions", self._route("openai", openai_completion_call)),
            web.post("/v1/messages", self._route("anthropic", anthropic_call)),
            web.get("/v1/models", self._models),
            web.post("/v1/messages/batches", self._anthropic_create),
            web.get("/v1/messages/batches", self._batch_list),
            web.get("/v1/messages/batches/{id}", self._batch_get),
            web.get("/v1/messages/batches/{id}/results", self._anthropic_results),
            web.post("/v1/messages/batches/{id}/cancel", self._batch_cancel),
            web.post("/v1/files", self._file_upload),
            web.get("/v1/files/{id}", self._file_get),
            web.get("/v1/files/{id}/content", self._file_content),
            web.post("/v1/batches", self._openai_create),
            web.get("/v1/batches", self._batch_list),
            web.get("/v1/batches/{id}", self._batch_get),
            web.post("/v1/batches/{id}/cancel", self._batch_cancel),
            web.post("/_control", self._control),
            web.post("/_inject", self._inject),
            web.get("/_stats", self._stats_view),
            web.post("/_reset", self._reset),
        ])
        return app

    # -- model requests

    def _route(self, api: str, parse: Callable[[dict[str, Any]], Call]) -> Any:
        async def handle(request: web.Request) -> web.Response:
            self._arrive(request.path)
            try:
                return await self._answer(request, api, parse)
            finally:
                self._stats["in_flight"] -= 1

        return handle

    def _arrive(self, path: str) -> None:
        s = self._stats
        s["requests"] += 1
        s["by_path"][path] += 1
        s["arrivals"].append(now := time.time())
        s["arrivals_by_path"].setdefault(path, []).append(now)
        s["in_flight"] += 1
        s["max_concurrency"] = max(s["max_concurrency"], s["in_flight"])

    async def _answer(self, request: web.Request, api: str,
                      parse: Callable[[dict[str, Any]], Call]) -> web.Response:
        raw = await request.read()
        try:
            call = self._read(parse, lambda: json.loads(raw))
        except ValueError as exc:
            return error_response(api, 400, "invalid", str(exc))
        fault, wait = self._pick_fault()
        if fault in ("429", "rpm_429"):
            return error_response(api, 429, "rate_limit", "Rate limit reached; try again later.",
                                  {"retry-after": _seconds(wait)})
        if fault == "timeout":
            await asyncio.sleep(self.options.hang_s)
        await self._latency()
        if fault == "500":
            return error_response(api, 500, "server", "The server had an error (injected).")
        if fault is None:
            self._stats["ok"] += 1
        return web.json_response(self._respond(api, call, fault))

    def _read(self, parse: Callable[[dict[str, Any]], Call], body: Callable[[], Any]) -> Call:
        """The request in `body()`, counted by stage; one that is not a request is counted and
        refused (ValueError)."""
        try:
            call = parse(body())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._stats["bad_requests"] += 1
            raise ValueError(f"invalid request: {exc}") from None
        self._stats["by_stage"][stage_of(detect(call.prompts[0]))] += 1
        return call

    def _pick_fault(self) -> tuple[str | None, float]:
        """(kind or None, retry-after seconds): the rpm limit, then injected, then random."""
        opts, now = self.options, time.time()
        while self._window and self._window[0] <= now - WINDOW_S:
            self._window.popleft()
        if opts.rpm and len(self._window) >= opts.rpm:
            return self._fault("rpm_429"), max(1, math.ceil(self._window[0] + WINDOW_S - now))
        self._window.append(now)
        if self._injected:
            kind, left = self._injected[0]
            if left == 1:
                self._injected.popleft()
            else:
                self._injected[0][1] -= 1
            return self._fault(kind), opts.retry_after
        if self._fault_rng.random() < opts.fault_rate:
            kinds = list(opts.faults)
            kind = self._fault_rng.choices(kinds, [opts.faults[k] for k in kinds])[0]
            return self._fault(kind), opts.retry_after
        return None, 0.0

    def _fault(self, kind: str) -> str:
        self._stats["faults"][kind] += 1
        return kind

    async def _latency(self) -> None:
        delay = self.options.latency + self._fault_rng.uniform(0, self.options.jitter)
        if delay > 0:
            await asyncio.sleep(delay)

    def _respond(self, api: str, call: Call, fault: str | None) -> dict[str, Any]:
        answers = [self._finish(call, prompt, fault) for prompt in call.prompts]
        if api == "anthropic":
            cached = self._cache_usage(call)
            body = anthropic_body(call, answers[0], cached)
            usage = body["usage"]
            self._count(usage["input_tokens"], usage["output_tokens"], *cached)
            return body
        body = (openai_chat_body if call.chat else openai_completion_body)(call, answers)
        self._count(body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"], 0, 0)
        return body

    def _finish(self, call: Call, prompt: str, fault: str | None) -> Answer:
        if fault == "garbage":
            text = garbage(random.Random(f"{self.options.seed}\0{prompt}"))
        else:
            text = compose(prompt, call.chat, self.options.seed, self.pool)
        return finish(text, call.stops, call.max_tokens, fault)

    def _cache_usage(self, call: Call) -> tuple[int, int]:
        """(read, written) tokens: the prefix through the last block with cache_control."""
        marked = [i for i, (_, b) in enumerate(call.blocks) if b.get("cache_control")]
        if not marked:
            return 0, 0
        prefix = call.blocks[: marked[-1] + 1]
        key = hashlib.sha256(json.dumps([call.model, prefix], sort_keys=True).encode()).hexdigest()
        size = sum(tokens(b.get("text", "")) for _, b in prefix)
        if key in self._cache:
            return size, 0
        self._cache.add(key)
        return 0, size

    def _count(self, prompt: int, completion: int, read: int, write: int) -> None:
        s = self._stats
        s["prompt_tokens"] += prompt
        s["completion_tokens"] += completion
        s["cache_read_tokens"] += read
        s["cache_write_tokens"] += write

    # -- batches

    async def _anthropic_create(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            items = [(r["custom_id"], r["params"]) for r in json.loads(raw)["requests"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise _refused("anthropic", 400, "invalid", f"invalid request: {exc}") from None
        ids = [cid for cid, _ in items]
        if (not ids or len(set(ids)) < len(ids)
                or not all(isinstance(c, str) and CUSTOM_ID.fullmatch(c) for c in ids)):
            raise _refused("anthropic", 400, "invalid", "requests: at least one, each with a "
                           "unique custom_id matching ^[a-zA-Z0-9_-]{1,64}$")
        return web.json_response(self._view(self._create("anthropic", items, len(raw)),
                                            request))

    async def _openai_create(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            endpoint, file_id = body["endpoint"], body["input_file_id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise _refused("openai", 400, "invalid", f"invalid request: {exc}") from None
        if endpoint not in BATCH_ENDPOINTS or body.get("completion_window") != "24h":
            raise _refused("openai", 400, "invalid", f"endpoint must be one of "
                           f"{sorted(BATCH_ENDPOINTS)} and completion_window 24h")
        if file_id not in self._files:
            raise _refused("openai", 404, "not_found", f"no file {file_id}")
        data = self._files[file_id].data
        items, errors = openai_input(data, endpoint)
        return web.json_response(self._view(self._create(
            "openai", items, len(data), endpoint=endpoint, input_file_id=file_id,
            metadata=body.get("metadata"), errors=errors), request))

    def _create(self, api: str, items: list[tuple[str, Any]], size: int, **more: Any) -> Batch:
        now = time.time()
        batch = Batch(_new_id("msgbatch_" if api == "anthropic" else "batch_"), api, items, now,
                      now + self.options.batch_delay, **more)
        self._batches[batch.id] = batch
        s = self._stats
        s["batches"][api] += 1
        s["batch_items"] += len(items)
        s["batch_submissions"].update(cid for cid, _ in items)
        s["batch_bytes"].append(size)
        return batch

    async def _batch_get(self, request: web.Request) -> web.Response:
        self._stats["batch_polls"] += 1
        return web.json_response(self._view(self._settled(request), request))

    async def _batch_cancel(self, request: web.Request) -> web.Response:
        """Asks to cancel: the batch shows cancelling now and has ended, with every item
        cancelled, at the next look (an ended batch stays as it ended)."""
        self._stats["batch_cancels"] += 1
        batch = self._settled(request)
        if batch.ended is None and not batch.errors and batch.cancel_at is None:
            batch.cancel_at = time.time()
        return web.json_response(self._view(batch, request))

    async def _batch_list(self, request: web.Request) -> web.Response:
        api = _api_of(request.path)
        found = [b for b in reversed(self._batches.values()) if b.api == api]
        for batch in found:
            self._settle(batch)
        data = [self._view(b, request) for b in found]
        return web.json_response({"object": "list", "data": data, "has_more": False,
                                  "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None})

    async def _anthropic_results(self, request: web.Request) -> web.Response:
        batch = self._settled(request)
        if batch.ended is None:
            raise _refused("anthropic", 400, "invalid",
                           f"batch {batch.id} has not ended: its results come when it has")
        lines = [anthropic_result_line(cid, *batch.outcomes[cid]) for cid, _ in batch.requests]
        return web.Response(body=jsonl(lines), content_type="application/binary")

    async def _file_upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            raise _refused("openai", 400, "invalid", "file: a multipart file is required")
        stored = self._store(upload.file.read(), upload.filename, str(form.get("purpose")))
        return web.json_response(file_view(stored))

    async def _file_get(self, request: web.Request) -> web.Response:
        return web.json_response(file_view(self._file(request)))

    async def _file_content(self, request: web.Request) -> web.Response:
        return web.Response(body=self._file(request).data, content_type="application/binary")

    def _file(self, request: web.Request) -> StoredFile:
        found = self._files.get(request.match_info["id"])
        if found is None:
            raise _refused("openai", 404, "not_found", f"no file {request.match_info['id']}")
        return found

    def _store(self, data: bytes, filename: str, purpose: str) -> StoredFile:
        stored = StoredFile(_new_id("file-"), data, filename, purpose, time.time())
        self._files[stored.id] = stored
        return stored

    def _view(self, batch: Batch, request: web.Request) -> dict[str, Any]:
        if batch.api == "anthropic":
            return anthropic_batch_view(batch, str(request.url.origin()))
        return openai_batch_view(batch)

    def _settled(self, request: web.Request) -> Batch:
        """The batch the path names, of the path's API, brought up to date."""
        api, batch_id = _api_of(request.path), request.match_info["id"]
        batch = self._batches.get(batch_id)
        if batch is None or batch.api != api:
            raise _refused(api, 404, "not_found", f"no batch {batch_id}")
        self._settle(batch)
        return batch

    def _settle(self, batch: Batch) -> None:
        """Ends a batch whose deadline has passed or whose cancel was asked: each item's
        outcome, and OpenAI's output and error files."""
        now = time.time()
        if batch.ended is not None or batch.errors or (batch.cancel_at is None
                                                       and now < batch.ends):
            return
        for cid, body in batch.requests:
            batch.outcomes[cid] = (("cancelled", None) if batch.cancel_at is not None
                                   else self._process(batch, body))
        batch.ended = now
        self._stats["batch_outcomes"].update(kind for kind, _ in batch.outcomes.values())
        if batch.api == "anthropic":
            return
        lines: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for cid, _ in batch.requests:
            kind, body = batch.outcomes[cid]
            lines[kind == "succeeded"].append(openai_output_line(cid, kind, body))
        if lines[True]:
            batch.output_file_id = self._store(jsonl(lines[True]), f"{batch.id}_output.jsonl",
                                               "batch_output").id
        if lines[False]:
            batch.error_file_id = self._store(jsonl(lines[False]), f"{batch.id}_error.jsonl",
                                              "batch_output").id

    def _process(self, batch: Batch, body: Any) -> tuple[str, Any]:
        """One item's outcome at its batch's end: expired or errored at the configured rates,
        else answered exactly as the same online request."""
        expired = self._batch_rng.random() < self.options.batch_expire_rate
        errored = self._batch_rng.random() < self.options.batch_error_rate
        if expired:
            return "expired", None
        if errored:
            return "errored", (500, error_body(batch.api, "server",
                                               "The server had an error (injected)."))
        parse = anthropic_call if batch.api == "anthropic" else BATCH_ENDPOINTS[batch.endpoint]
        try:
            call = self._read(parse, lambda: body)
        except ValueError as exc:
            return "errored", (400, error_body(batch.api, "invalid", str(exc)))
        return "succeeded", self._respond(batch.api, call, None)

    # -- the rest

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fakeapi",
                 "type": "model", "display_name": "Fake model",
                 "created_at": "2024-01-01T00:00:00Z"}
        return web.json_response({"object": "list", "data": [model], "has_more": False,
                                  "first_id": model["id"], "last_id": model["id"]})

    async def _control(self, request: web.Request) -> web.Response:
        return await self._command(request, lambda body: self.control(**body))

    async def _inject(self, request: web.Request) -> web.Response:
        return await self._command(
            request, lambda body: self.inject(body["kind"], body.get("count", 1)))

    async def _reset(self, request: web.Request) -> web.Response:
        return await self._command(request, lambda body: self.reset())

    async def _stats_view(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _command(self, request: web.Request, run: Callable[[dict[str, Any]], Any]
                       ) -> web.Response:
        try:
            body = json.loads(await request.text() or "{}")
            result = run(body)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True, "options": result or asdict(self.options)})


def _api_of(path: str) -> str:
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def _refused(api: str, status: int, kind: str, message: str) -> web.HTTPException:
    """An error answer to raise from a handler, in the API's format."""
    error = web.HTTPNotFound if status == 404 else web.HTTPBadRequest
    return error(text=json.dumps(error_body(api, kind, message)),
                 content_type="application/json")


async def start(api: FakeAPI, port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve `api` on 127.0.0.1:port (0: any free port); returns the runner and the URL."""
    # handler_cancellation: a client that gives up (a timeout) frees its handler at once.
    runner = web.AppRunner(api.app(), access_log=None, handler_cancellation=True,
                           shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, HOST, port, backlog=1024).start()
    return runner, f"http://{HOST}:{runner.addresses[0][1]}"


# ---------------------------------------------------------------------------------- control


class Handle:
    """A fake server's URL and its controls, over HTTP, so it works across processes."""

    def __init__(self, url: str, process: subprocess.Popen[str] | None = None) -> None:
        self.url = url
        self.process = process  # set by serve_process
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def control(self, **options: Any) -> dict[str, Any]:
        return self._call("/_control", options)["options"]

    def inject(self, kind: str, count: int = 1) -> None:
        self._call("/_inject", {"kind": kind, "count": count})

    def stats(self) -> dict[str, Any]:
        return self._call("/_stats")

    def reset(self) -> None:
        self._call("/_reset", {})

    def _call(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"content-type": "application/json"})
        try:
            with self._opener.open(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ValueError(json.loads(exc.read()).get("error", str(exc))) from None


@contextmanager
def serve(**options: Any) -> Iterator[Handle]:
    """A fake server in a background thread of this process, stopped on exit."""
    api = FakeAPI(**options)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fakeapi", daemon=True)
    thread.start()
    try:
        runner, url = asyncio.run_coroutine_threadsafe(start(api), loop).result(10)
        try:
            yield Handle(url)
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextmanager
def serve_process(**options: Any) -> Iterator[Handle]:
    """A fake server in a child process (`python -m tests.fakeapi`), SIGTERMed on exit; the
    handle's `process` is the Popen."""
    args = [f"--{name.replace('_', '-')}={_cli_value(v)}" for name, v in options.items()]
    command = [sys.executable, "-m", "tests.fakeapi", "--port=0", *args]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline() if process.stdout else ""
            if not line.startswith("listening on "):
                raise RuntimeError(f"fakeapi did not start: {line!r}")
            yield Handle(line.split()[-1], process)
        finally:
            process.terminate()
            process.wait(10)


def _cli_value(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def parse_args(argv: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m tests.fakeapi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="0: a free port (the default)")
    for f in fields(Options):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name)
    args = vars(parser.parse_args(argv))
    port = args.pop("port")
    return port, {name: value for name, value in args.items() if value is not None}


async def serve_forever(api: FakeAPI, port: int) -> None:
    """Serve until SIGTERM or SIGINT; the first line on stdout says where."""
    runner, url = await start(api, port)
    print(f"listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    port, options = parse_args(argv)
    asyncio.run(serve_forever(FakeAPI(**options), port))


if __name__ == "__main__":
    main()
