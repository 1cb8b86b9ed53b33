"""Proposer actors: sample shots from the pool, ask the model for new tasks, filter, enqueue."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.llm import LLMClient, make_request
from actors.stages import Outcome, Stages


class Proposer:
    def __init__(self, index: int, stages: Stages, replicas: list[Any], pool: Any,
                 candidates: Any, writer: Any) -> None:
        self.index = index
        self.stages = stages
        self.conf = stages.cfg.stages.propose
        self.client = LLMClient(replicas, self.conf.max_in_flight, stage="propose")
        self.pool, self.candidates, self.writer = pool, candidates, writer
        self.stopping = False
        self.step = 0
        self.seed = stages.cfg.run.seed

    def stop(self) -> None:
        self.stopping = True

    async def run(self) -> int:
        while not self.stopping:
            await self._step()
        return self.step

    async def _step(self) -> None:
        shot_sets = await self.pool.sample.remote(self.conf.prompts_per_call)
        if not shot_sets:  # the pool has enough candidates waiting for now
            await asyncio.sleep(0.2)
            return
        self.step += 1
        ids = [f"p{self.index}-{self.step:06d}-{k}" for k in range(len(shot_sets))]
        completions = await asyncio.gather(*[
            self.client.complete(make_request(
                self.stages.propose_prompt(shots), self.conf,
                seed=hash((self.seed, self.index, self.step, k)) & 0x7FFFFFFF))
            for k, shots in enumerate(shot_sets)])
        out, candidates = Outcome(), []
        for rid, shots, c in zip(ids, shot_sets, completions, strict=True):
            cands, o = self.stages.propose_outcome(rid, shots, c)
            candidates += cands
            out.merge(o)
        await self.writer.write.remote(out.as_dict())
        if candidates:
            await self.candidates.put_async(candidates)
        await self.pool.delivered.remote(len(shot_sets))
