"""The loop shared by the classifier and instance actors: lease tasks from the pool, do them.

A worker announces itself to the pool when it starts, so whatever an earlier life of the same
actor held (Ray restarts a dead one) goes back on the board to be done again.
"""

from __future__ import annotations

from typing import Any


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
            batch = await self.pool.take.remote(self.name, self.stage, self.batch_size)
            if batch:
                await self.handle(batch)

    async def handle(self, batch: list[dict[str, Any]]) -> None:
        raise NotImplementedError
