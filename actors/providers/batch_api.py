"""The providers' batch APIs behind one interface: submit requests, poll the batch, read its
items, cancel it. Anthropic's Message Batches take the requests in the create call; OpenAI's
Batch API takes them as an uploaded JSONL file and answers in output and error files.

A batch item is the very request the online path sends (api.py builds both bodies), and its
answer is read by the same functions, so a batched answer is the answer the same request gets
online. The SDKs do the HTTP, with their retries and timeouts, over the watched transport, so
faults are counted and a 429 reaches `on_throttle`. Nothing here keeps state between calls:
a batch submitted by an earlier process is polled and read the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from actors.config import ApiModel
from actors.providers.api import (
    Secret,
    anthropic_body,
    anthropic_completion,
    anthropic_local_stops,
    counting_faults,
    openai_body,
    openai_completion,
    sdk_client,
    watched_http,
)
from actors.providers.llm import Completion, Request

T = TypeVar("T")
# OpenAI's error codes for requests a batch never ran.
_OPENAI_UNRUN = {"batch_expired": "expired", "batch_cancelled": "cancelled"}
_OPENAI_ENDED = ("completed", "expired", "cancelled")


@dataclass(frozen=True)
class BatchItem:
    """One request's outcome in an ended batch."""

    completion: Completion | None  # the answer, read exactly as the online answer is
    failure: str = ""  # "" when answered; else "errored" | "expired" | "cancelled"
    message: str = ""  # the provider's error message for a failed item (never a key)


@dataclass(frozen=True)
class BatchState:
    batch_id: str
    # "in_progress" (with validating, finalizing, cancelling) | "ended" | "failed". "ended"
    # covers completed, expired and cancelled batches: their items say which.
    status: str
    counts: dict[str, int]  # succeeded, errored, expired, cancelled, processing
    message: str = ""  # why a batch failed as a whole (OpenAI's validation)


class BatchApiError(Exception):
    """A batch call that failed after the SDK's retries. `status` is the HTTP status when
    there was an answer (a 4xx will not pass by asking again); the message is the SDK's,
    which never holds the key."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def wire_json(obj: Any) -> bytes:
    """JSON as both SDKs send a body (compact, UTF-8): what a batch's size is counted in."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _ignore(_retry_after: float | None) -> None:
    pass


class BatchApi:
    """One model's batch API. `stops` are the stop sequences of the stage's requests (a
    stage's requests all share its decoding's): Anthropic is not sent the ones of whitespace
    alone, so its answers are cut at them when read, also for a batch submitted by an earlier
    process, which is why they are given here and every submitted request must carry them."""

    def __init__(self, conf: ApiModel, api_key: Secret | None, prefixes: tuple[str, ...] = (),
                 *, stops: tuple[str, ...] = (),
                 on_throttle: Callable[[float | None], None] = _ignore) -> None:
        self.conf = conf
        self.prefixes = prefixes
        self.stops = tuple(stops)
        self.http = watched_http(conf, on_throttle)
        self.client = sdk_client(conf, api_key, self.http)
        self.faults: dict[str, int] = {}

    def item_bytes(self, custom_id: str, req: Request) -> int:
        """This item's size in the submitted body or file, for the bytes-per-batch limit."""
        raise NotImplementedError

    async def submit(self, items: list[tuple[str, Request]]) -> str:
        """Sends the requests, keyed by the caller's custom ids; returns the batch's id."""
        ids = [cid for cid, _ in items]
        if not ids or len(set(ids)) < len(ids):
            raise ValueError(f"a batch needs at least one request and unique custom ids "
                             f"(got {len(ids)} requests, {len(set(ids))} distinct ids)")
        return await self._call("submit", self._send(self._payload(items)))

    async def state(self, batch_id: str) -> BatchState:
        return await self._call("state", self._state(batch_id))

    async def results(self, batch_id: str) -> dict[str, BatchItem]:
        """Every item of an ended batch by custom id. A request with no line in the output
        failed as its batch ended: expired, cancelled, or else errored."""
        return await self._call("results", self._results(batch_id))

    async def cancel(self, batch_id: str) -> None:
        """Asks the provider to stop the batch; it ends soon after, its unrun items
        cancelled (the ones already answered are kept)."""
        await self._call("cancel", self._cancel(batch_id))

    async def close(self) -> None:
        await self.http.aclose()

    def take_faults(self) -> dict[str, int]:
        """The HTTP faults (429s, 5xx, timeouts, dropped connections) the SDK's attempts met
        since the last call, by kind."""
        faults, self.faults = self.faults, {}
        return faults

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        with counting_faults() as faults:
            try:
                return await call
            except BatchApiError:
                raise
            except Exception as exc:  # noqa: BLE001 - every SDK error, with its status
                raise BatchApiError(
                    f"{self.conf.provider} batch {what}: {type(exc).__name__}: "
                    f"{str(exc)[:300]}", getattr(exc, "status_code", None)) from None
            finally:
                for kind, n in faults.items():
                    self.faults[kind] = self.faults.get(kind, 0) + n

    def _payload(self, items: list[tuple[str, Request]]) -> Any:
        """What is sent, checked first (ValueError: the caller's mistake; nothing is sent)."""
        raise NotImplementedError

    async def _send(self, payload: Any) -> str:
        raise NotImplementedError

    async def _state(self, batch_id: str) -> BatchState:
        raise NotImplementedError

    async def _results(self, batch_id: str) -> dict[str, BatchItem]:
        raise NotImplementedError

    async def _cancel(self, batch_id: str) -> None:
        raise NotImplementedError


class AnthropicBatchApi(BatchApi):
    def _item(self, custom_id: str, req: Request) -> dict[str, Any]:
        return {"custom_id": custom_id, "params": anthropic_body(self.conf, req, self.prefixes)}

    def item_bytes(self, custom_id: str, req: Request) -> int:
        return len(wire_json(self._item(custom_id, req)))

    def _payload(self, items: list[tuple[str, Request]]) -> list[dict[str, Any]]:
        mine = anthropic_local_stops(self.conf, self.stops)
        for cid, req in items:
            if anthropic_local_stops(self.conf, req.stop) != mine:
                raise ValueError(
                    f"request {cid} stops at {list(req.stop)!r}; this batch API was made with "
                    f"stops={list(self.stops)!r}: Anthropic is not sent stop sequences of "
                    f"whitespace alone and answers are cut at them when read, so pass the "
                    f"stage's stop sequences as `stops`")
        return [self._item(cid, req) for cid, req in items]

    async def _send(self, payload: list[dict[str, Any]]) -> str:
        return (await self.client.messages.batches.create(requests=payload)).id

    async def _state(self, batch_id: str) -> BatchState:
        b = await self.client.messages.batches.retrieve(batch_id)
        c = b.request_counts
        return BatchState(b.id, "ended" if b.processing_status == "ended" else "in_progress",
                          {"succeeded": c.succeeded, "errored": c.errored,
                           "expired": c.expired, "cancelled": c.canceled,
                           "processing": c.processing})

    async def _results(self, batch_id: str) -> dict[str, BatchItem]:
        b = await self.client.messages.batches.retrieve(batch_id)
        took = (b.ended_at - b.created_at).total_seconds() if b.ended_at else 0.0
        items: dict[str, BatchItem] = {}
        async for line in await self.client.messages.batches.results(batch_id):
            r = line.result
            if r.type == "succeeded":
                items[line.custom_id] = BatchItem(
                    anthropic_completion(r.message, self.stops, self.conf, took))
            elif r.type == "errored":
                items[line.custom_id] = BatchItem(None, "errored", r.error.error.message)
            else:
                items[line.custom_id] = BatchItem(
                    None, "cancelled" if r.type == "canceled" else "expired")
        return items

    async def _cancel(self, batch_id: str) -> None:
        await self.client.messages.batches.cancel(batch_id)


class OpenAIBatchApi(BatchApi):
    def _line(self, custom_id: str, req: Request) -> dict[str, Any]:
        path, body = openai_body(self.conf, req)
        return {"custom_id": custom_id, "method": "POST", "url": "/v1" + path, "body": body}

    def item_bytes(self, custom_id: str, req: Request) -> int:
        return len(wire_json(self._line(custom_id, req))) + 1  # and its newline

    def _payload(self, items: list[tuple[str, Request]]) -> tuple[str, bytes, int]:
        """(endpoint, the JSONL input file, its number of requests)."""
        lines = [self._line(cid, req) for cid, req in items]
        endpoints = sorted({line["url"] for line in lines})
        if len(endpoints) > 1:
            raise ValueError(f"an OpenAI batch has one endpoint; these requests need "
                             f"{endpoints} (chat and completion prompts): send them apart")
        return endpoints[0], b"".join(wire_json(line) + b"\n" for line in lines), len(lines)

    async def _send(self, payload: tuple[str, bytes, int]) -> str:
        endpoint, data, count = payload
        upload = await self.client.files.create(file=("requests.jsonl", data), purpose="batch")
        batch = await self.client.batches.create(
            input_file_id=upload.id, endpoint=endpoint, completion_window="24h",
            metadata={"model": self.conf.label, "requests": str(count)})
        return batch.id

    async def _state(self, batch_id: str) -> BatchState:
        b = await self.client.batches.retrieve(batch_id)
        status = ("failed" if b.status == "failed" else "ended" if b.status in _OPENAI_ENDED
                  else "in_progress")
        c = b.request_counts
        done, failed = (c.completed, c.failed) if c else (0, 0)
        counts = {"succeeded": done, "errored": failed, "expired": 0, "cancelled": 0,
                  "processing": 0}
        counts["processing" if status == "in_progress" else _unrun(b.status)] += (
            (c.total if c else 0) - done - failed)
        return BatchState(b.id, status, counts, _why(b))

    async def _results(self, batch_id: str) -> dict[str, BatchItem]:
        from openai.types import Completion as OpenAICompletion
        from openai.types.chat import ChatCompletion

        b = await self.client.batches.retrieve(batch_id)
        if b.status not in (*_OPENAI_ENDED, "failed"):
            raise BatchApiError(f"openai batch results: batch {batch_id} is {b.status}: its "
                                f"results come once it has ended")
        ended = b.completed_at or b.expired_at or b.cancelled_at or b.failed_at
        took = float((ended or time.time()) - b.created_at)
        answer = ChatCompletion if b.endpoint == "/v1/chat/completions" else OpenAICompletion
        items: dict[str, BatchItem] = {}
        for file_id in (b.output_file_id, b.error_file_id):
            for line in await self._lines(file_id):
                items[line["custom_id"]] = self._outcome(line, answer, took)
        total = b.request_counts.total if b.request_counts else 0
        if len(items) < total or b.status == "failed":  # ids with no line: from the input
            failed = BatchItem(None, _unrun(b.status), _why(b))
            for line in await self._lines(b.input_file_id):
                items.setdefault(line["custom_id"], failed)
        return items

    async def _lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        content = await self.client.files.content(file_id)
        # bytes.splitlines, not str's: a JSON string may hold U+2028, which str splits at.
        return [json.loads(raw) for raw in content.content.splitlines() if raw.strip()]

    def _outcome(self, line: dict[str, Any], answer: Any, took: float) -> BatchItem:
        """An output or error file line read: the answer, or how it failed."""
        response, error = line.get("response"), line.get("error")
        if response and response.get("status_code") == 200:
            # `construct`: the SDK's own lenient reading of a response body.
            return BatchItem(openai_completion(answer.construct(**response["body"]),
                                               self.conf.label, took))
        if error:
            return BatchItem(None, _OPENAI_UNRUN.get(error.get("code"), "errored"),
                             error.get("message") or "")
        body = (response or {}).get("body") or {}
        message = (body.get("error") or {}).get("message") or ""
        return BatchItem(None, "errored",
                         f"HTTP {(response or {}).get('status_code')}: {message}")

    async def _cancel(self, batch_id: str) -> None:
        await self.client.batches.cancel(batch_id)


def _unrun(status: str) -> str:
    """What became of the requests an ended (or failed) OpenAI batch did not run."""
    return status if status in ("expired", "cancelled") else "errored"


def _why(batch: Any) -> str:
    """Why an OpenAI batch failed as a whole (its validation errors), or ""."""
    errors = (batch.errors.data or []) if batch.errors else []
    return "; ".join(e.message or e.code or "" for e in errors)


def make_batch_api(conf: ApiModel, api_key: Secret | None, prefixes: tuple[str, ...] = (),
                   **kwargs: Any) -> BatchApi:
    """The batch API of the model's provider (`stops`, `on_throttle`: see BatchApi)."""
    cls = AnthropicBatchApi if conf.provider == "anthropic" else OpenAIBatchApi
    return cls(conf, api_key, prefixes, **kwargs)
