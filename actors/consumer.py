"""The loop shared by the classifier and instance actors: lease tasks from the pool, do them.

A worker announces itself to the pool when it starts, so whatever an earlier life of the same
actor held (Ray restarts a dead one) goes back on the board to be done again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable
from typing import Any

from ray.exceptions import RayActorError

log = logging.getLogger(__name__)


async def survive_restarts(step: Awaitable[None]) -> None:
    """One step of a loop; if the pool or writer died under it, Ray restarts that actor and it
    rebuilds itself from the run directory, where the step's work is either committed or
    still pending. So the loop waits a moment and goes on."""
    try:
        await step
    except RayActorError as exc:
        log.warning("an actor this one calls died; going on once Ray restarts it: %s",
                    str(exc).splitlines()[0][:200])
        await asyncio.sleep(1.0)


async def run_loops(n: int, worker: Any) -> None:
    """n copies of a worker's step loop, so one actor keeps up to n batches in flight (an
    API answers many requests at once; one batch at a time would leave it idle)."""
    async def loop() -> None:
        while not worker.stopping:
            await survive_restarts(worker._step())

    await asyncio.gather(*[loop() for _ in range(max(1, n))])


class StageWorker:
    stage = ""

    def __init__(self, name: str, pool: Any, writer: Any, client: Any, batch_size: int) -> None:
        self.name, self.pool, self.writer, self.client = name, pool, writer, client
        self.batch_size = batch_size
        self.stopping = False
        pool.lost.remote(name)
        client.bind(name)

    def stop(self) -> None:
        self.stopping = True

    async def run(self) -> None:
        await run_loops(math.ceil(self.client.max_in_flight / self.batch_size), self)

    async def _step(self) -> None:
        batch = await self.pool.take.remote(self.name, self.stage, self.batch_size)
        if batch:
            await self.handle(batch)

    async def handle(self, batch: list[dict[str, Any]]) -> None:
        raise NotImplementedError
