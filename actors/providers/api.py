"""API providers behind the one interface the stages use: `await provider.complete(request)`.

Anthropic speaks the Messages API through the `anthropic` SDK; OpenAI and any OpenAI-compatible
server (vLLM, llama.cpp's server, Ollama) speak chat or completions through `openai`. Transport
retries (429, 5xx, timeouts, dropped connections) are the SDKs' own; a transport wrapper under
the SDK sees every attempt, so each request's faults are counted and a 429 reaches the gate,
which slows the whole cluster, not just the request that met it.

The request-shaping functions are pure and unit-tested; the provider classes are thin.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import email.utils
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2

from actors.config import ApiModel
from actors.providers.llm import Completion, Request

# The faults met by the request under way in this asyncio task (the SDK's retries run inside it).
_FAULTS: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
    "faults", default=None)


class Secret:
    """An API key that never shows itself in a repr, a log line or a traceback's locals."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


def retry_after_s(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def count_fault(kind: str) -> None:
    faults = _FAULTS.get()
    if faults is not None:
        faults[kind] = faults.get(kind, 0) + 1


class WatchingTransport(httpx2.AsyncHTTPTransport):
    """Sees every HTTP attempt the SDK makes, including the ones it retries."""

    def __init__(self, on_throttle: Callable[[float | None], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_throttle = on_throttle

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx2.TimeoutException:
            count_fault("timeout")
            raise
        except httpx2.TransportError:
            count_fault("connection")
            raise
        if response.status_code == 429:
            count_fault("http_429")
            self.on_throttle(retry_after_s(response.headers))
        elif response.status_code >= 400:
            count_fault(f"http_{response.status_code}")
        return response


def apply_stops(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Cut at the earliest stop sequence (for providers that cannot be sent all of them)."""
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def openai_params(req: Request, drop: set[str]) -> dict[str, Any]:
    params = {"temperature": req.temperature, "top_p": req.top_p,
              "presence_penalty": req.presence_penalty,
              "frequency_penalty": req.frequency_penalty, "seed": req.seed,
              "stop": list(req.stop) or None}
    return {k: v for k, v in params.items() if k not in drop and v is not None}


def anthropic_messages(prompt: str | list[dict[str, str]], cache: bool,
                       prefixes: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]],
                                                                list[dict[str, Any]]]:
    """(system blocks, messages) for the Messages API, with a cache breakpoint at the end of the
    fixed part of the prompt: the last message before the final user turn (the few-shot
    examples of a chat template), or a completion prompt's known fixed prefix."""
    def block(text: str, mark: bool = False) -> dict[str, Any]:
        return {"type": "text", "text": text,
                **({"cache_control": {"type": "ephemeral"}} if mark else {})}

    if isinstance(prompt, str):
        prefix = next((p for p in prefixes if p and prompt.startswith(p)
                       and len(p) < len(prompt)), "")
        blocks = ([block(prefix, cache), block(prompt[len(prefix):])] if prefix
                  else [block(prompt)])
        return [], [{"role": "user", "content": blocks}]
    system = [block(m["content"]) for m in prompt if m["role"] == "system" and m["content"]]
    turns = [{"role": m["role"], "content": [block(m["content"])]}
             for m in prompt if m["role"] != "system"]
    if cache:
        if len(turns) >= 2:
            turns[-2]["content"][-1]["cache_control"] = {"type": "ephemeral"}
        elif system:
            system[-1]["cache_control"] = {"type": "ephemeral"}
    return system, turns


@contextlib.contextmanager
def counting_faults() -> Iterator[dict[str, int]]:
    """The HTTP faults met inside the block by this asyncio task (the SDK's retries run in
    it), by kind, as WatchingTransport sees them."""
    faults: dict[str, int] = {}
    token = _FAULTS.set(faults)
    try:
        yield faults
    finally:
        _FAULTS.reset(token)


def watched_http(conf: ApiModel, on_throttle: Callable[[float | None], None]) -> httpx2.AsyncClient:
    """The HTTP client under an SDK client: every attempt is watched, so its faults are counted
    and a 429 reaches `on_throttle`."""
    return httpx2.AsyncClient(
        transport=WatchingTransport(on_throttle, limits=httpx2.Limits(
            max_connections=conf.limits.max_in_flight + 8,
            max_keepalive_connections=conf.limits.max_in_flight + 8)),
        timeout=conf.timeout_s, follow_redirects=True)


def sdk_client(conf: ApiModel, api_key: Secret | None, http: httpx2.AsyncClient) -> Any:
    """The provider's async SDK client over `http`, with the model's retries and timeout."""
    key = api_key.reveal() if api_key else None
    if conf.provider == "anthropic":
        import anthropic

        return anthropic.AsyncAnthropic(
            api_key=key, base_url=conf.base_url, timeout=conf.timeout_s,
            max_retries=conf.max_retries, http_client=http)
    import openai

    return openai.AsyncOpenAI(
        api_key=key or "not-needed", base_url=conf.base_url, timeout=conf.timeout_s,
        max_retries=conf.max_retries, http_client=http)


def openai_body(conf: ApiModel, req: Request) -> tuple[str, dict[str, Any]]:
    """(path under /v1, body) of the request as the API takes it: chat or completions by the
    prompt's form. The online call and a batch item send exactly this."""
    body = {"model": conf.model, "max_tokens": req.max_tokens,
            **openai_params(req, set(conf.drop_params))}
    if req.mode == "chat":
        return "/chat/completions", {**body, "messages": req.prompt}
    return "/completions", {**body, "prompt": req.prompt}


def openai_completion(r: Any, label: str, latency_s: float) -> Completion:
    """A ChatCompletion or a (text) Completion of the SDK, read into ours."""
    choice = r.choices[0]
    message = getattr(choice, "message", None)
    text = (message.content if message is not None else choice.text) or ""
    finish = choice.finish_reason or "stop"
    usage = r.usage
    details = getattr(usage, "prompt_tokens_details", None) if usage else None
    cached = (getattr(details, "cached_tokens", None) or 0) if details else 0
    return Completion(
        text=text, finish_reason="length" if finish == "length" else "stop",
        model=label, prompt_tokens=(usage.prompt_tokens if usage else 0) - cached,
        completion_tokens=usage.completion_tokens if usage else 0,
        cache_read_tokens=cached, latency_s=latency_s)


def anthropic_local_stops(conf: ApiModel, stops: tuple[str, ...]) -> tuple[str, ...]:
    """The stop sequences the Messages API refuses (whitespace alone), so never sent: an
    answer is cut at them when it is read."""
    return () if "stop" in conf.drop_params else tuple(s for s in stops if not s.strip())


def anthropic_body(conf: ApiModel, req: Request, prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The Messages API body of the request, with its cache breakpoint. The online call and a
    batch item's `params` are exactly this."""
    system, messages = anthropic_messages(req.prompt, conf.prompt_cache, prefixes)
    sendable = ([s for s in req.stop if s.strip()] if "stop" not in conf.drop_params else [])
    return {"model": conf.model, "max_tokens": req.max_tokens, "messages": messages,
            **({"system": system} if system else {}),
            **({"stop_sequences": sendable} if sendable else {})}


def anthropic_completion(message: Any, stops: tuple[str, ...], conf: ApiModel,
                         latency_s: float) -> Completion:
    """An SDK Message read into ours, cut at the request's `stops` the API was not sent."""
    text = "".join(getattr(b, "text", "") for b in message.content)
    text, stopped_here = apply_stops(text, stops if "stop" not in conf.drop_params else ())
    truncated = message.stop_reason == "max_tokens" and not stopped_here
    u = message.usage
    return Completion(
        text=text, finish_reason="length" if truncated else "stop", model=conf.label,
        prompt_tokens=u.input_tokens, completion_tokens=u.output_tokens,
        cache_read_tokens=u.cache_read_input_tokens or 0,
        cache_write_tokens=u.cache_creation_input_tokens or 0, latency_s=latency_s)


def error_completion(model: str, exc: Exception, start: float) -> Completion:
    """A request that failed after the SDK's retries: recorded, never raised into the stage.
    The message is the SDK's (status and body), which never includes the key."""
    kind = type(exc).__name__
    return Completion("", "error", model, latency_s=time.perf_counter() - start,
                      error=f"{kind}: {str(exc)[:300]}")


class ApiProvider:
    """What the OpenAI and Anthropic providers share: the SDK client over the watched
    transport, and the faults of each request."""

    def __init__(self, conf: ApiModel, api_key: Secret | None,
                 on_throttle: Callable[[float | None], None],
                 prefixes: tuple[str, ...] = ()) -> None:
        self.conf = conf
        self.label = conf.label
        self.prefixes = prefixes
        self.http = watched_http(conf, on_throttle)
        self.client = sdk_client(conf, api_key, self.http)

    async def complete(self, req: Request) -> Completion:
        start = time.perf_counter()
        with counting_faults() as faults:
            try:
                c = await self._call(req, start)
            except Exception as exc:  # noqa: BLE001 - every SDK error becomes a recorded answer
                c = error_completion(self.label, exc, start)
        return dataclasses.replace(c, faults=faults) if faults else c

    async def _call(self, req: Request, start: float) -> Completion:
        raise NotImplementedError


class OpenAIProvider(ApiProvider):
    async def _call(self, req: Request, start: float) -> Completion:
        # The SDK's `post` with the body as the API takes it: its retries, timeouts and
        # typed response, without `create`'s per-field transform of the request, which costs
        # about 10 CPU-ms for a 64-message few-shot chat prompt (against ~1.5 ms; see
        # benchmarks/README.md). Our request is already in the wire format.
        from openai.types import Completion as OpenAICompletion
        from openai.types.chat import ChatCompletion

        path, body = openai_body(self.conf, req)
        cast = ChatCompletion if req.mode == "chat" else OpenAICompletion
        r = await self.client.post(path, cast_to=cast, body=body)
        return openai_completion(r, self.label, time.perf_counter() - start)


class AnthropicProvider(ApiProvider):
    """Anthropic's API (from version 2026-10-21) takes no sampling parameters, so temperature
    and top_p are not sent; stop sequences of whitespace alone are applied here instead."""

    async def _call(self, req: Request, start: float) -> Completion:
        from anthropic.types import Message

        # `post` with the wire-format body, for the reason given in OpenAIProvider._call.
        r = await self.client.post("/v1/messages", cast_to=Message,
                                   body=anthropic_body(self.conf, req, self.prefixes))
        return anthropic_completion(r, req.stop, self.conf, time.perf_counter() - start)


def make_provider(conf: ApiModel, api_key: Secret | None,
                  on_throttle: Callable[[float | None], None],
                  prefixes: tuple[str, ...] = ()) -> ApiProvider:
    cls = AnthropicProvider if conf.provider == "anthropic" else OpenAIProvider
    return cls(conf, api_key, on_throttle, prefixes)
