"""Instance actors: input-first or output-first generation, instance filters, finished tasks."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.consumer import QueueConsumer
from actors.llm import LLMClient, make_request
from actors.stages import Outcome, Stages


class Instancer(QueueConsumer):
    def __init__(self, stages: Stages, replicas: list[Any], classified: Any, pool: Any,
                 writer: Any) -> None:
        super().__init__(classified)
        self.stages = stages
        self.conf = stages.cfg.stages.instances
        self.client = LLMClient(replicas, self.conf.max_in_flight, stage="instances")
        self.pool, self.writer = pool, writer

    async def handle(self, batch: list[dict[str, Any]]) -> None:
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
