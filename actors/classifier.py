"""The classifier actor: asks whether each admitted instruction is a classification task."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.client import LLMClient
from actors.consumer import StageWorker
from actors.llm import make_request
from actors.stages import Stages


class Classifier(StageWorker):
    stage = "classify"

    def __init__(self, name: str, stages: Stages, client: LLMClient, pool: Any,
                 writer: Any) -> None:
        super().__init__(name, pool, writer, client, stages.cfg.queues.batch_size)
        self.stages = stages
        self.conf = stages.cfg.stages.classify

    async def handle(self, batch: list[dict[str, Any]]) -> None:
        answers = await asyncio.gather(*[
            self.client.complete_parsed(make_request(
                self.stages.classify_prompt(task["instruction"]), self.conf, seed=0),
                self.stages.classify_problem)
            for task in batch])
        units, labelled, undone = [], [], []
        for task, (c, retried) in zip(batch, answers, strict=True):
            if c.finish_reason == "cancelled":  # the run is stopping: pending for --resume
                undone.append(task["id"])
                continue
            task, out = self.stages.classify_outcome(task, c, retried)
            units.append(out.as_dict())
            labelled.append(task)
        if units:
            await self.writer.write.remote(units)
            await self.pool.labelled.remote(labelled)
        if undone:
            await self.pool.release.remote(self.name, undone)
