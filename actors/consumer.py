"""The loop shared by the classifier and instance actors: lease tasks from the pool, do them.

A worker announces itself to the pool when it starts, so whatever an earlier life of the same
actor held (Ray restarts a dead one) goes back on the board to be done again.
"""

from __future__ import annotations

import asyncio
import logging
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


class StageWorker:
    stage = ""

    def __init__(self, name: str, pool: Any, writer: Any, batch_size: int) -> None:
        self.name, self.pool, self.writer = name, pool, writer
        self.batch_size = batch_size
        self.stopping = False
        pool.lost.remote(name)

    def stop(self) -> None:
        self.stopping = True

    async def run(self) -> None:
        while not self.stopping:
            await survive_restarts(self._step())

    async def _step(self) -> None:
        batch = await self.pool.take.remote(self.name, self.stage, self.batch_size)
        if batch:
            await self.handle(batch)

    async def handle(self, batch: list[dict[str, Any]]) -> None:
        raise NotImplementedError
