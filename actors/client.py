"""What a stage holds to ask a model: replicas, a cap on requests in flight, the cache."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import RayActorError

from actors.cache import ResponseCache, cache_key
from actors.config import Pipeline
from actors.llm import Completion, Request


@dataclass
class LLMClient:
    """What a stage holds: its model's replicas, a cap on requests in flight, and the cache.

    With `replay_only` it never calls a model (there may be none): a request the cache does
    not hold comes back 'uncached'. A proposal the replayed run never asked is simply not
    asked (proposers skip it); a task's answer that is missing is recorded as an error.
    """

    replicas: list[Any]
    max_in_flight: int = 16
    stage: str = "propose"
    model: str = ""
    cache_path: str | None = None
    replay_only: bool = False
    _outstanding: list[int] = field(default_factory=list)
    _sem: asyncio.Semaphore | None = None
    _cache: ResponseCache | None = None
    _lost: set[int] = field(default_factory=set)

    async def complete(self, req: Request) -> Completion:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_in_flight)
            self._outstanding = [0] * len(self.replicas)
            if self.cache_path:
                self._cache = ResponseCache(self.cache_path)
        key = ""
        if self._cache is not None:
            key = cache_key(self.model, req)
            if (hit := self._cache.get(key)) is not None:
                return hit
        if self.replay_only or not self.replicas:
            return Completion("", "uncached", self.model,
                              error="not in the response cache, and cache.replay_only is set")
        async with self._sem:
            while True:
                live = [i for i in range(len(self.replicas)) if i not in self._lost]
                if not live:
                    return Completion("", "error", self.model, error="every model replica is gone")
                k = min(live, key=self._outstanding.__getitem__)
                self._outstanding[k] += 1
                try:
                    c = await self.replicas[k].complete.remote(req, self.stage)
                    break
                except RayActorError:
                    # Its process or node is gone: the others take its requests from now on.
                    self._lost.add(k)
                finally:
                    self._outstanding[k] -= 1
        if self._cache is not None:
            self._cache.put(key, c)
        return c


def client_for(cfg: Pipeline, stage: str, replicas: list[Any], cache_path: str | None
               ) -> LLMClient:
    conf = getattr(cfg.stages, stage)
    return LLMClient(replicas, conf.max_in_flight, stage, cfg.models[conf.model].name,
                     cache_path if cfg.cache.enabled else None, cfg.cache.replay_only)
