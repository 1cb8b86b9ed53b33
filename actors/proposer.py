"""Proposer actors: take numbered prompts from the pool, ask the model, filter, hand back."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from actors.client import LLMClient
from actors.consumer import run_loops
from actors.ids import prompt_number
from actors.llm import make_request
from actors.stages import Stages


def propose_seed(run_seed: int, k: int) -> int:
    """Prompt k's decoding seed: the same in every run, restart and replay of this config."""
    return (run_seed * 1_000_003 + k) & 0x7FFFFFFF


class Proposer:
    def __init__(self, name: str, stages: Stages, client: LLMClient, pool: Any,
                 candidates: Any, writer: Any) -> None:
        self.name = name
        self.stages = stages
        self.conf = stages.cfg.stages.propose
        self.client = client
        self.pool, self.candidates, self.writer = pool, candidates, writer
        self.stopping = False
        self.steps = 0
        self.seed = stages.cfg.run.seed
        pool.lost.remote(name)  # prompts an earlier life of this actor held are asked again
        client.bind(name)

    def stop(self) -> None:
        self.stopping = True

    async def run(self) -> int:
        await run_loops(math.ceil(self.client.max_in_flight / self.conf.prompts_per_call), self)
        return self.steps

    async def _step(self) -> None:
        issued = await self.pool.sample.remote(self.name, self.conf.prompts_per_call)
        if not issued:  # the pool has enough candidates coming for now
            await asyncio.sleep(0.2)
            return
        self.steps += 1
        answers = await asyncio.gather(*[
            self.client.complete_parsed(
                make_request(self.stages.propose_prompt(shots), self.conf,
                             seed=propose_seed(self.seed, k)), self.stages.propose_problem)
            for k, shots in issued])
        units = [self.stages.propose_outcome(k, shots, c, retried)
                 for (k, shots), (c, retried) in zip(issued, answers, strict=True)
                 # cancelled: the run is stopping (asked again on --resume); uncached: a replay
                 # reached past what the recorded run asked
                 if c.finish_reason not in ("cancelled", "uncached")]
        if not units:
            return
        results = await self.writer.write.remote([u.as_dict() for u in units])
        # Committed first, then handed on; a repeated prompt hands on its first copy.
        await self.candidates.put_async([
            {"worker": self.name, "prompt": prompt_number(u.key),
             "candidates": r["candidates"] if r["dup"] else u.candidates}
            for u, r in zip(units, results, strict=True)])
