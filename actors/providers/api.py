"""API providers behind the one interface the stages use: `await provider.complete(request)`.

Anthropic speaks the Messages API through the `anthropic` SDK; OpenAI and any OpenAI-compatible
server (vLLM, llama.cpp's server, Ollama) speak chat or completions through `openai`. Transport
retries (429, 5xx, timeouts, dropped connections) are the SDKs' own; a transport wrapper under
the SDK sees every attempt, so each request's faults are counted and a 429 reaches the gate,
which slows the whole cluster, not just the request that met it.

The request-shaping functions are pure and unit-tested; the provider classes are thin.
"""

from __future__ import annotations

import contextvars
import dataclasses
import email.utils
import time
from collections.abc import Callable
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


def error_completion(model: str, exc: Exception, start: float) -> Completion:
    """A request that failed after the SDK's retries: recorded, never raised into the stage.
    The message is the SDK's (status and body), which never includes the key."""
    kind = type(exc).__name__
    return Completion("", "error", model, latency_s=time.perf_counter() - start,
                      error=f"{kind}: {str(exc)[:300]}")


class ApiProvider:
    """What the OpenAI and Anthropic providers share: the key, the watched transport, faults."""

    def __init__(self, conf: ApiModel, api_key: Secret | None,
                 on_throttle: Callable[[float | None], None],
                 prefixes: tuple[str, ...] = ()) -> None:
        self.conf = conf
        self.label = conf.label
        self.drop = set(conf.drop_params)
        self.prefixes = prefixes
        self.key = api_key.reveal() if api_key else None
        self.http = httpx2.AsyncClient(
            transport=WatchingTransport(on_throttle, limits=httpx2.Limits(
                max_connections=conf.limits.max_in_flight + 8,
                max_keepalive_connections=conf.limits.max_in_flight + 8)),
            timeout=conf.timeout_s, follow_redirects=True)

    async def complete(self, req: Request) -> Completion:
        faults: dict[str, int] = {}
        token = _FAULTS.set(faults)
        start = time.perf_counter()
        try:
            c = await self._call(req, start)
        except Exception as exc:  # noqa: BLE001 - every SDK error becomes a recorded answer
            c = error_completion(self.label, exc, start)
        finally:
            _FAULTS.reset(token)
        return dataclasses.replace(c, faults=faults) if faults else c

    async def _call(self, req: Request, start: float) -> Completion:
        raise NotImplementedError


class OpenAIProvider(ApiProvider):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import openai

        self.client = openai.AsyncOpenAI(
            api_key=self.key or "not-needed", base_url=self.conf.base_url,
            timeout=self.conf.timeout_s, max_retries=self.conf.max_retries,
            http_client=self.http)

    async def _call(self, req: Request, start: float) -> Completion:
        # The SDK's `post` with the body as the API takes it: its retries, timeouts and
        # typed response, without `create`'s per-field transform of the request, which costs
        # about 10 CPU-ms for a 64-message few-shot chat prompt (against ~1.5 ms; see
        # benchmarks/README.md). Our request is already in the wire format.
        from openai.types import Completion as OpenAICompletion
        from openai.types.chat import ChatCompletion

        body = {"model": self.conf.model, "max_tokens": req.max_tokens,
                **openai_params(req, self.drop)}
        if req.mode == "chat":
            r = await self.client.post("/chat/completions", cast_to=ChatCompletion,
                                       body={**body, "messages": req.prompt})
            text = r.choices[0].message.content or ""
        else:
            r = await self.client.post("/completions", cast_to=OpenAICompletion,
                                       body={**body, "prompt": req.prompt})
            text = r.choices[0].text or ""
        finish = r.choices[0].finish_reason or "stop"
        usage = r.usage
        details = getattr(usage, "prompt_tokens_details", None) if usage else None
        cached = (getattr(details, "cached_tokens", None) or 0) if details else 0
        return Completion(
            text=text, finish_reason="length" if finish == "length" else "stop",
            model=self.label, prompt_tokens=(usage.prompt_tokens if usage else 0) - cached,
            completion_tokens=usage.completion_tokens if usage else 0,
            cache_read_tokens=cached, latency_s=time.perf_counter() - start)


class AnthropicProvider(ApiProvider):
    """Anthropic's API (from version 2026-10-21) takes no sampling parameters, so temperature
    and top_p are not sent; stop sequences of whitespace alone are applied here instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import anthropic

        self.client = anthropic.AsyncAnthropic(
            api_key=self.key, base_url=self.conf.base_url, timeout=self.conf.timeout_s,
            max_retries=self.conf.max_retries, http_client=self.http)

    async def _call(self, req: Request, start: float) -> Completion:
        system, messages = anthropic_messages(req.prompt, self.conf.prompt_cache, self.prefixes)
        sendable = [s for s in req.stop if s.strip()] if "stop" not in self.drop else []
        from anthropic.types import Message

        # `post` with the wire-format body, for the reason given in OpenAIProvider._call.
        r = await self.client.post("/v1/messages", cast_to=Message, body={
            "model": self.conf.model, "max_tokens": req.max_tokens, "messages": messages,
            **({"system": system} if system else {}),
            **({"stop_sequences": sendable} if sendable else {})})
        text = "".join(getattr(b, "text", "") for b in r.content)
        text, stopped_here = apply_stops(text, req.stop if "stop" not in self.drop else ())
        truncated = r.stop_reason == "max_tokens" and not stopped_here
        u = r.usage
        return Completion(
            text=text, finish_reason="length" if truncated else "stop", model=self.label,
            prompt_tokens=u.input_tokens, completion_tokens=u.output_tokens,
            cache_read_tokens=u.cache_read_input_tokens or 0,
            cache_write_tokens=u.cache_creation_input_tokens or 0,
            latency_s=time.perf_counter() - start)


def make_provider(conf: ApiModel, api_key: Secret | None,
                  on_throttle: Callable[[float | None], None],
                  prefixes: tuple[str, ...] = ()) -> ApiProvider:
    cls = AnthropicProvider if conf.provider == "anthropic" else OpenAIProvider
    return cls(conf, api_key, on_throttle, prefixes)
