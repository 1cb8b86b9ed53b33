"""The stage workers: proposer, classifier and instance actors, one loop shape for all three.

Each loop makes one call to the pool per batch, `exchange`: the results of the batch it just
did go in, the next batch comes out (the pool waits until there is one). The model's answers
become records here, through the pure stage logic (stages.py); the pool decides what they mean
for the run. A worker keeps up to `max_in_flight_per_actor` requests going by running several
loops.

Each process a worker runs in is a new life (Ray restarts a dead actor in a new process); the
pool and the gate see the life in every call, and hand out again what an earlier life held.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayActorError

from actors.method.stages import StageLogic
from actors.providers.client import LLMClient
from actors.providers.llm import Completion, make_request

log = logging.getLogger(__name__)

# Answers that carry no result: the run is stopping (the work stays pending for --resume).
# A proposal a replay cannot find ('uncached') is not asked either: the recorded run never
# asked it. A task's missing answer is recorded as an error (stages.py).
CANCELLED = ("cancelled",)
UNASKED = ("cancelled", "uncached")


def propose_seed(run_seed: int, k: int) -> int:
    """Prompt k's decoding seed: the same in every run, restart and replay of this config."""
    return (run_seed * 1_000_003 + k) & 0x7FFFFFFF


class StageWorker:
    stage = ""

    def __init__(self, name: str, stages: StageLogic, client: LLMClient, pool: Any,
                 batch_size: int) -> None:
        self.name, self.stages, self.client, self.pool = name, stages, client, pool
        self.batch_size = client.lease or batch_size
        self.batches = 0
        self.life = uuid.uuid4().hex  # a restarted actor is a new life: see Pool.exchange
        client.bind(name, self.life)

    async def run(self) -> int:
        """Until the pool hands out no more work; returns the batches done."""
        loops = max(1, math.ceil(self.client.max_in_flight / self.batch_size))
        await asyncio.gather(*[self._loop() for _ in range(loops)])
        return self.batches

    async def _loop(self) -> None:
        results: list[Any] = []
        released: list[str] = []
        while True:
            try:
                work = await self.pool.exchange.remote(self.name, self.life, self.stage,
                                                       results, released, self.batch_size)
            except RayActorError as exc:
                # The pool died or is unreachable: Ray restarts it from the run directory.
                # The results go again (a copy it already has is dropped by its key).
                log.warning("the pool is unreachable; trying again: %s",
                            str(exc).splitlines()[0][:200])
                await asyncio.sleep(1.0)
                continue
            if not work:
                return
            self.batches += 1
            results, released = await self.handle(work)

    async def handle(self, work: list[Any]) -> tuple[list[Any], list[str]]:
        """(results for the pool, ids of tasks not done)."""
        raise NotImplementedError

    @staticmethod
    def _sort(tasks: list[dict[str, Any]], answers: list[tuple[Completion, list[Any]]],
              result: Callable[[dict[str, Any], Completion, list[Any]], Any]
              ) -> tuple[list[Any], list[str]]:
        """(a result per answered task, ids of the tasks whose request was cancelled)."""
        results, undone = [], []
        for task, (c, retried) in zip(tasks, answers, strict=True):
            if c.finish_reason in CANCELLED:
                undone.append(task["id"])
            else:
                results.append(result(task, c, retried))
        return results, undone

    async def _ask(self, prompts: list[Any], conf: Any, seeds: list[int],
                   problems: list[Any]) -> list[tuple[Completion, list[Any]]]:
        return await asyncio.gather(*[
            self.client.complete_parsed(make_request(p, conf, seed=s), problem)
            for p, s, problem in zip(prompts, seeds, problems, strict=True)])


class Proposer(StageWorker):
    stage = "propose"

    def __init__(self, name: str, stages: StageLogic, client: LLMClient, pool: Any) -> None:
        super().__init__(name, stages, client, pool, stages.cfg.stages.propose.prompts_per_call)

    async def handle(self, work: list[Any]) -> tuple[list[Any], list[str]]:
        conf, seed = self.stages.cfg.stages.propose, self.stages.cfg.run.seed
        answers = await self._ask([self.stages.propose_prompt(shots) for _, shots in work],
                                  conf, [propose_seed(seed, k) for k, _ in work],
                                  [self.stages.propose_problem] * len(work))
        # A prompt left unanswered stays leased to this actor: asked again on --resume.
        return [self.stages.propose_outcome(k, shots, c, retried).as_dict()
                for (k, shots), (c, retried) in zip(work, answers, strict=True)
                if c.finish_reason not in UNASKED], []


class Classifier(StageWorker):
    stage = "classify"

    def __init__(self, name: str, stages: StageLogic, client: LLMClient, pool: Any) -> None:
        super().__init__(name, stages, client, pool, stages.cfg.actors.tasks_per_lease)

    async def handle(self, work: list[Any]) -> tuple[list[Any], list[str]]:
        answers = await self._ask(
            [self.stages.classify_prompt(t["instruction"]) for t in work],
            self.stages.cfg.stages.classify, [0] * len(work),
            [self.stages.classify_problem] * len(work))
        def result(task: dict[str, Any], c: Completion, retried: list[Any]) -> Any:
            labelled, out = self.stages.classify_outcome(task, c, retried)
            return labelled, out.as_dict()

        return self._sort(work, answers, result)


class Instancer(StageWorker):
    stage = "instances"

    def __init__(self, name: str, stages: StageLogic, client: LLMClient, pool: Any) -> None:
        super().__init__(name, stages, client, pool, stages.cfg.actors.tasks_per_lease)

    async def handle(self, work: list[Any]) -> tuple[list[Any], list[str]]:
        answers = await self._ask(
            [self.stages.instance_prompt(t) for t in work], self.stages.cfg.stages.instances,
            [0] * len(work),
            [lambda c, t=t: self.stages.instance_problem(t, c) for t in work])
        return self._sort(work, answers, lambda task, c, retried: (
            task["id"], self.stages.instance_outcome(task, c, retried).as_dict()))

