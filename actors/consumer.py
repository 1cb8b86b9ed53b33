"""The loop shared by queue-fed actors: take a batch, handle it, until asked to stop."""

from __future__ import annotations

from typing import Any

from ray.util.queue import Empty


class QueueConsumer:
    def __init__(self, source: Any) -> None:
        self.source = source
        self.stopping = False

    def stop(self) -> None:
        self.stopping = True

    async def run(self) -> None:
        while not self.stopping:
            try:
                batch = await self.source.get_async(timeout=0.2)
            except Empty:
                continue
            await self.handle(batch)

    async def handle(self, batch: list[dict[str, Any]]) -> None:
        raise NotImplementedError
