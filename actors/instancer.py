"""Instance actors: input-first or output-first generation, instance filters, finished tasks."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.client import LLMClient
from actors.consumer import StageWorker
from actors.llm import make_request
from actors.stages import Stages


class Instancer(StageWorker):
    stage = "instances"

    def __init__(self, name: str, stages: Stages, client: LLMClient, pool: Any,
                 writer: Any) -> None:
        super().__init__(name, pool, writer, client, stages.cfg.queues.batch_size)
        self.stages = stages
        self.conf = stages.cfg.stages.instances

    async def handle(self, batch: list[dict[str, Any]]) -> None:
        answers = await asyncio.gather(*[
            self.client.complete_parsed(
                make_request(self.stages.instance_prompt(task), self.conf, seed=0),
                lambda c, task=task: self.stages.instance_problem(task, c))
            for task in batch])
        done, outs, undone = [], [], []
        for task, (c, retried) in zip(batch, answers, strict=True):
            if c.finish_reason == "cancelled":  # the run is stopping: pending for --resume
                undone.append(task["id"])
                continue
            done.append(task["id"])
            outs.append(self.stages.instance_outcome(task, c, retried))
        if outs:
            results = await self.writer.write.remote([o.as_dict() for o in outs])
            # A repeated unit (this actor restarted) settles as its first copy did.
            await self.pool.settle.remote({
                tid: r["ok"] if r["dup"] else bool(o.dataset)
                for tid, o, r in zip(done, outs, results, strict=True)})
        if undone:
            await self.pool.release.remote(self.name, undone)
