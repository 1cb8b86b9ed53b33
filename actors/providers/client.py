"""What a stage holds to ask a model: a backend (the embedded model's replicas, or an API behind
the gate), a cap on its own requests in flight, the response cache and parse retries."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import RayActorError

from actors.config import ApiModel, Decoding, PipelineConfig
from actors.engine.limits import cost_usd
from actors.providers.api import ApiProvider, Secret, make_provider
from actors.providers.cache import ResponseCache, cache_key
from actors.providers.llm import Attempt, Completion, Request
from actors.providers.local_model import home_replica, pick_replica

# A slot handed on to the actor's next request is reported to the gate within this long.
HANDOFF_REPORT_S = 0.2
BUDGET_REACHED = "budget reached (run.max_cost): asked again on --resume with a larger budget"


def estimate_tokens(prompt: str | list[dict[str, str]]) -> int:
    """A deliberately high guess of a prompt's tokens (3 characters each), for reservations:
    the gate refunds the difference once the API reports the real count."""
    text = prompt if isinstance(prompt, str) else "".join(m["content"] for m in prompt)
    return math.ceil(len(text) / 3) + 8


@dataclass
class LocalBackend:
    """The embedded model's replicas: the stage's home replica (which holds its prefix)
    unless it is much more loaded, else the least loaded; a lost replica's share to the rest."""

    replicas: list[Any]
    stage: str
    model: str
    _outstanding: list[int] = field(default_factory=list)
    _lost: set[int] = field(default_factory=set)

    def bind(self, holder: str, life: str) -> None:
        pass

    async def complete(self, req: Request, asked: float = 0.0) -> Completion:
        if not self._outstanding:
            self._outstanding = [0] * len(self.replicas)
        while True:
            live = [i for i in range(len(self.replicas)) if i not in self._lost]
            if not live:
                return Completion("", "error", self.model, error="every model replica is gone")
            k = pick_replica(self._outstanding, live, home_replica(self.stage, len(self.replicas)))
            self._outstanding[k] += 1
            try:
                return await self.replicas[k].complete.remote(req, self.stage, asked)
            except RayActorError:
                self._lost.add(k)  # its process or node is gone: the others take its requests
            finally:
                self._outstanding[k] -= 1


@dataclass
class ApiBackend:
    """An API model: every request waits for the gate's grant (cluster-wide limits and budget),
    then goes through the provider's SDK; the gate hears what it cost and any 429."""

    conf: ApiModel
    key_name: str                   # the model's key under `models:`, the gate's name for it
    api_key: Secret | None
    gate: Any
    prefixes: tuple[str, ...] = ()
    holder: str = ""
    life: str = ""
    _provider: ApiProvider | None = None
    _asking: list[tuple[tuple[int, int], asyncio.Future]] = field(default_factory=list)
    _asker: asyncio.Task | None = None
    _settling: list[tuple[int, dict[str, float], str, dict[str, int], str]] = field(
        default_factory=list)
    _handoff: bool = False  # the gate's last word: slots may go straight to our next request
    _flush: asyncio.Handle | None = None
    _urgent: bool = False

    def __getstate__(self) -> dict[str, Any]:
        """Travels to its actor without the event-loop state it builds there."""
        return {**self.__dict__, "_provider": None, "_asking": [], "_asker": None,
                "_settling": [], "_handoff": False, "_flush": None, "_urgent": False}

    def bind(self, holder: str, life: str) -> None:
        """The actor that holds this backend, and its process: the gate frees the slots an
        earlier life held when it first hears from a new one."""
        self.holder, self.life = holder, life

    def _throttled(self, retry_after: float | None) -> None:
        self.gate.throttled.remote(self.key_name, retry_after)

    async def complete(self, req: Request, asked: float = 0.0) -> Completion:
        if self._provider is None:  # built in the actor's process: SDK clients do not travel
            self._provider = make_provider(self.conf, self.api_key, self._throttled,
                                           self.prefixes)
        grant = await self._grant(estimate_tokens(req.prompt), req.max_tokens)
        if grant is None:
            return Completion("", "cancelled", self.conf.label, error=BUDGET_REACHED)
        c = await self._provider.complete(req)
        cost = cost_usd(self.conf.price, c.prompt_tokens, c.completion_tokens,
                        c.cache_read_tokens, c.cache_write_tokens)
        self._finished(grant, {
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "cache_read_tokens": c.cache_read_tokens,
            "cache_write_tokens": c.cache_write_tokens, "cost_usd": cost}, c.error, c.faults)
        return dataclasses.replace(c, cost_usd=cost)

    async def _grant(self, input_tokens: int, output_tokens: int) -> int | None:
        """The gate's grant for one request; requests made in the same turn of the event loop
        (a batch from asyncio.gather) ask together, in one call."""
        fut = asyncio.get_running_loop().create_future()
        self._asking.append(((input_tokens, output_tokens), fut))
        if self._asker is None or self._asker.done():
            self._asker = asyncio.get_running_loop().create_task(self._ask())
        return await fut

    def _next_waiting(self) -> asyncio.Future | None:
        return next((fut for _, fut in self._asking if not fut.done()), None)

    async def _ask(self) -> None:
        await asyncio.sleep(0)  # let the rest of the batch join
        while batch := [(size, fut) for size, fut in self._asking if not fut.done()]:
            try:
                grants, self._handoff = await self.gate.acquire_many.remote(
                    self.key_name, self.holder, self.life, [size for size, _ in batch])
            except Exception as exc:  # noqa: BLE001 - the waiting requests get the error
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                grants = []
            for (_, fut), grant in zip(batch, grants, strict=False):
                if not fut.done():
                    fut.set_result(grant)
                elif grant is not None:  # a slot was handed to it meanwhile: pass this on
                    if (nxt := self._next_waiting()) is not None:
                        nxt.set_result(grant)
                    else:
                        self._settle((grant, {}, "", {}, "unused"))
            self._asking = [(size, fut) for size, fut in self._asking if not fut.done()]

    def _finished(self, grant: int, usage: dict[str, float], error: str,
                  faults: dict[str, int]) -> None:
        """A request ended: its slot goes straight to this actor's next waiting request when
        the gate allows it (the gate hears of it a little later), else back to the gate. The
        gate counts the faults: it hears of every request, whether its answer is recorded."""
        nxt = self._next_waiting() if self._handoff else None
        if nxt is not None:
            nxt.set_result(grant)
        self._settle((grant, usage, error, faults, "done" if nxt is None else "handed"))

    def _settle(self, item: tuple[int, dict[str, float], str, dict[str, int], str]) -> None:
        """Told to the gate without waiting for it: a freed slot within this turn of the
        event loop (others may wait for it), a handed-on one within HANDOFF_REPORT_S."""
        self._settling.append(item)
        loop = asyncio.get_running_loop()
        if item[4] != "handed" and not self._urgent:
            self._urgent = True
            if self._flush is not None:
                self._flush.cancel()
            self._flush = loop.call_soon(self._send_settles)
        elif self._flush is None:
            self._flush = loop.call_later(HANDOFF_REPORT_S, self._send_settles)

    def _send_settles(self) -> None:
        items, self._settling = self._settling, []
        self._flush, self._urgent = None, False
        if items:
            reply = self.gate.settle_many.remote(self.key_name, self.holder, items)
            asyncio.ensure_future(self._heard(reply))

    async def _heard(self, reply: Any) -> None:
        with contextlib.suppress(Exception):  # the gate restarting: its next reply tells
            self._handoff = await reply


@dataclass
class BatchBackend:
    """A stage with `delivery: batch`: its requests wait in the batcher actor for the
    stage's next provider batch. The custom id is the response cache's key, so the same
    request asked again after a restart finds the batch it is already in."""

    batcher: Any
    stage: str
    model: str

    def bind(self, holder: str, life: str) -> None:
        pass

    async def complete(self, req: Request, asked: float = 0.0) -> Completion:
        while True:
            try:
                return await self.batcher.complete.remote(self.stage,
                                                          cache_key(self.model, req), req)
            except RayActorError:  # Ray restarts it from batches.jsonl: ask it again
                await asyncio.sleep(1.0)


@dataclass
class LLMClient:
    """What a stage holds: its backend, a cap on requests in flight, and the cache.

    With `replay_only` it never calls a model (there may be none): a request the cache does
    not hold comes back 'uncached'. A proposal the replayed run never asked is simply not
    asked (proposers skip it); a task's answer that is missing is recorded as an error.
    """

    backend: LocalBackend | ApiBackend | BatchBackend | None
    max_in_flight: int = 16
    # Tasks (or prompts) a worker leases from the pool at a time; 0: the stage's own size.
    # A provider batch's worth for delivery: batch. One for the embedded model: each of its
    # requests takes seconds, so a Ray call per result costs nothing, and a result waiting
    # for the rest of its lease would hold back the first tasks (benchmarks/README.md).
    lease: int = 0
    stage: str = "propose"
    model: str = ""
    cache_path: str | None = None
    replay_only: bool = False
    parse_retries: int = 0
    # A greedy request's parse retries sample at this temperature (config.py's default).
    retry_temperature: float = Decoding.model_fields["retry_temperature"].default
    _sem: asyncio.Semaphore | None = None
    _cache: ResponseCache | None = None

    def bind(self, holder: str, life: str) -> None:
        if self.backend is not None:
            self.backend.bind(holder, life)

    async def complete(self, req: Request, asked: float = 0.0) -> Completion:
        """`asked`: when the work this request serves was first asked (a parse retry keeps
        its first attempt's), so the embedded model serves the oldest work of a stage first:
        the next dataset line waits on the earliest accepted task. 0: now."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_in_flight)
            if self.cache_path:
                self._cache = ResponseCache(self.cache_path)
        key = ""
        if self._cache is not None:
            key = cache_key(self.model, req)
            if (hit := self._cache.get(key)) is not None:
                return hit
        if self.replay_only or self.backend is None:
            return Completion("", "uncached", self.model,
                              error="not in the response cache, and cache.replay_only is set")
        async with self._sem:
            c = await self.backend.complete(req, asked or time.time())
        if self._cache is not None:
            c = self._cache.put(key, c)
        return c

    async def complete_parsed(self, req: Request, problem: Callable[[Completion], str]
                              ) -> tuple[Completion, list[Attempt]]:
        """Ask, and ask again while `problem` finds the answer unusable, at most
        `parse_retries` times; the last answer is the stage's to record.

        Retry n asks with seed + 7919 n. A greedy request (temperature 0 or top_p 0) would
        get the same answer again, so its retries sample at `retry_temperature` with top_p 1.
        Each retry is a function of the request and n alone: a replay from the response cache
        asks exactly what the run asked.
        """
        retried: list[Attempt] = []
        asked = time.time()
        c = await self.complete(req, asked)
        greedy = not req.temperature or not req.top_p
        sampling = {"temperature": self.retry_temperature, "top_p": 1.0} if greedy else {}
        while (why := problem(c)) and len(retried) < self.parse_retries:
            retried.append(Attempt(c, why))
            seed = ((req.seed or 0) + 7919 * len(retried)) & 0x7FFFFFFF
            c = await self.complete(dataclasses.replace(req, seed=seed, **sampling), asked)
        return c, retried


def client_for(cfg: PipelineConfig, stage: str, replicas: dict[str, list[Any]], gate: Any,
               keys: dict[str, Secret | None], cache_path: str | None,
               prefixes: tuple[str, ...] = (), batcher: Any = None) -> LLMClient:
    """The client a stage's actors get, for the model the config names for that stage."""
    conf = getattr(cfg.stages, stage)
    model = cfg.models[conf.model]
    backend: LocalBackend | ApiBackend | BatchBackend | None
    in_flight, lease = conf.max_in_flight_per_actor, 0
    if cfg.cache.replay_only:
        backend = None
    elif conf.delivery == "batch":
        backend = BatchBackend(batcher, stage, model.label)
        lease = conf.batch.max_requests
        in_flight = lease * conf.batch.max_in_flight
    elif isinstance(model, ApiModel):
        backend = ApiBackend(model, conf.model, keys.get(conf.model), gate, prefixes)
    else:
        backend, lease = LocalBackend(replicas[conf.model], stage, model.label), 1
    return LLMClient(backend, in_flight, lease, stage, model.label,
                     cache_path if cfg.cache.enabled else None, cfg.cache.replay_only,
                     conf.parse_retries, conf.retry_temperature)
