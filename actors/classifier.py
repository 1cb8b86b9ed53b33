"""The classifier actor: asks whether each accepted instruction is a classification task."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.consumer import QueueConsumer
from actors.llm import LLMClient, make_request
from actors.stages import Outcome, Stages, response_record


class Classifier(QueueConsumer):
    def __init__(self, stages: Stages, replicas: list[Any], accepted: Any, classified: Any,
                 writer: Any) -> None:
        super().__init__(accepted)
        self.stages = stages
        self.conf = stages.cfg.stages.classify
        self.client = LLMClient(replicas, self.conf.max_in_flight, stage="classify")
        self.classified, self.writer = classified, writer

    async def handle(self, batch: list[dict[str, Any]]) -> None:
        completions = await asyncio.gather(*[
            self.client.complete(make_request(
                self.stages.classify_prompt(task["instruction"]), self.conf, seed=0))
            for task in batch])
        out, labelled = Outcome(), []
        for task, c in zip(batch, completions, strict=True):
            rid = f"c-{task['id']}"
            out.responses.append(response_record(rid, "classify", c))
            is_cls, answer = self.stages.classify_answer(c)
            labelled.append({**task, "is_classification": is_cls,
                             "classify": {"model": c.model, "response_id": rid,
                                          "answer": answer}})
        out.accept("classify", len(labelled))
        await self.writer.write.remote(out.as_dict())
        await self.classified.put_async(labelled)
