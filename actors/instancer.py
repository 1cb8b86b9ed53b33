"""Instance actors: input-first or output-first generation, instance filters, finished tasks."""

from __future__ import annotations

import asyncio
from typing import Any

from ray.util.queue import Empty

from actors.llm import LLMClient, make_request
from actors.stages import Outcome, Stages


class Instancer:
    def __init__(self, stages: Stages, replicas: list[Any], classified: Any, pool: Any,
                 writer: Any) -> None:
        self.stages = stages
        self.conf = stages.cfg.stages.instances
        self.client = LLMClient(replicas, self.conf.max_in_flight, stage="instances")
        self.classified, self.pool, self.writer = classified, pool, writer
        self.stopping = False

    def stop(self) -> None:
        self.stopping = True

    async def run(self) -> None:
        while not self.stopping:
            try:
                batch = await self.classified.get_async(timeout=0.2)
            except Empty:
                continue
            await self._handle(batch)

    async def _handle(self, batch: list[dict[str, Any]]) -> None:
        completions = await asyncio.gather(*[
            self.client.complete(make_request(self.stages.instance_prompt(task), self.conf,
                                              seed=0))
            for task in batch])
        out = Outcome()
        for task, c in zip(batch, completions, strict=True):
            out.merge(self.stages.instance_outcome(task, f"i-{task['id']}", c))
        await self.writer.write.remote(out.as_dict())
        ok = len(out.dataset)
        await self.pool.settle.remote(ok, len(batch) - ok)
