"""The run's provider batches (`delivery: batch`): what waits to be sent, what is out, what
came back. Pure state, no Ray and no I/O: the batcher actor (batcher.py) does the talking.

A request is known by its custom id, a hash of the model and the request (the response
cache's key), so the same request asked again, after a restart or a `--resume`, finds the
batch it is already in instead of being submitted twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.config import ModelBatches, StageBatches
from actors.providers.llm import Request


@dataclass
class Waiting:
    request: Request
    since: float


@dataclass
class OutBatch:
    stage: str
    ids: list[str]
    ended: bool = False


@dataclass
class Sorted:
    """What an ended batch means: answers (and items out of retries) to hand out, and items
    to ask again (online, or in a later batch, as the stage's `batch.retry` says)."""

    deliver: dict[str, Any] = field(default_factory=dict)
    retry_online: dict[str, Request] = field(default_factory=dict)
    requeued: list[str] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)  # failed items by kind


class BatchBook:
    def __init__(self, stages: dict[str, StageBatches], models: dict[str, ModelBatches],
                 size_of: Callable[[str, str, Request], int]) -> None:
        self.stages, self.models, self.size_of = stages, models, size_of
        self.waiting: dict[str, dict[str, Waiting]] = {s: {} for s in stages}
        self.out: dict[str, OutBatch] = {}
        self.where: dict[str, str] = {}       # custom id -> the batch it was last sent in
        self.requests: dict[str, Request] = {}  # what a sent item asked, while someone waits
        self.tries: dict[str, int] = {}
        self.sending: dict[str, str] = {}     # custom id -> stage, between due() and sent()
        self.submitting = dict.fromkeys(stages, 0)  # batches being submitted, per stage
        self.ready: dict[str, Any] = {}       # answers nobody has asked for yet

    def known(self, batch_id: str, stage: str, ids: list[str], ended: bool) -> None:
        """A batch from the run directory's log (an earlier life of the run sent it)."""
        self.out[batch_id] = OutBatch(stage, list(ids), ended)
        for cid in ids:
            self.where[cid] = batch_id

    def ask(self, stage: str, cid: str, req: Request, now: float) -> str:
        """'ready' (take it with `take`), 'out' (in a batch still running), 'ended' (in an
        ended batch whose results must be fetched again: `batch_of`), or 'queued'."""
        if cid in self.ready:
            return "ready"
        if cid in self.sending or any(cid in w for w in self.waiting.values()):
            return "out"
        if (bid := self.where.get(cid)) is not None:
            self.requests[cid] = req
            return "ended" if self.out[bid].ended else "out"
        self.waiting[stage][cid] = Waiting(req, now)
        return "queued"

    def take(self, cid: str) -> Any:
        self.requests.pop(cid, None)
        return self.ready.pop(cid)

    def batch_of(self, cid: str) -> str:
        return self.where[cid]

    def open_batches(self, stage: str) -> int:
        return self.submitting[stage] + sum(1 for b in self.out.values()
                                            if b.stage == stage and not b.ended)

    def due(self, stage: str, model: str, now: float) -> list[tuple[str, Request]]:
        """The next batch to send for `stage`, oldest requests first: when enough wait, or
        the oldest has waited `max_wait_s`, and the stage has room for another batch. Empty
        when none is due."""
        conf, limit = self.stages[stage], self.models[model]
        waiting = self.waiting[stage]
        if not waiting or self.open_batches(stage) >= conf.max_in_flight:
            return []
        size = min(conf.max_requests, limit.max_requests_per_batch)
        oldest = min(w.since for w in waiting.values())
        if len(waiting) < size and now - oldest < conf.max_wait_s:
            return []
        batch: list[tuple[str, Request]] = []
        total = 0
        for cid, w in sorted(waiting.items(), key=lambda kv: kv[1].since):
            n = self.size_of(stage, cid, w.request)
            if batch and (len(batch) >= size or total + n > limit.max_bytes_per_batch):
                break
            batch.append((cid, w.request))
            total += n
        self.submitting[stage] += 1
        for cid, req in batch:
            del waiting[cid]
            self.sending[cid] = stage
            self.requests[cid] = req
        return batch

    def wait_s(self, now: float) -> float:
        """Seconds until some stage's oldest waiting request makes a batch due."""
        ages = [self.stages[s].max_wait_s - (now - min(w.since for w in ws.values()))
                for s, ws in self.waiting.items() if ws]
        return max(0.0, min(ages)) if ages else float("inf")

    def sent(self, stage: str, batch_id: str, ids: list[str]) -> None:
        self.submitting[stage] -= 1
        self.out[batch_id] = OutBatch(stage, list(ids))
        for cid in ids:
            self.sending.pop(cid, None)
            self.where[cid] = batch_id

    def not_sent(self, ids: list[str], now: float) -> None:
        """The submission failed: the items wait again (their askers are still waiting)."""
        self.submitting[self.sending[ids[0]]] -= 1
        for cid in ids:
            stage = self.sending.pop(cid)
            self.waiting[stage][cid] = Waiting(self.requests[cid], now)

    def refused(self, ids: list[str], answer: Any) -> None:
        """The budget refused the batch: its items are answered `answer` (not sent)."""
        self.submitting[self.sending[ids[0]]] -= 1
        for cid in ids:
            del self.sending[cid]
            self.ready[cid] = answer

    def answered(self, cid: str, answer: Any) -> None:
        """An item asked again online has its answer."""
        self.ready[cid] = answer

    def ended(self, batch_id: str, items: dict[str, Any], now: float,
              answer: Callable[[Any], Any]) -> Sorted:
        """Sort an ended batch's items (its results fetched now, or fetched again for items
        asked after a restart). `items` maps custom ids to BatchItem-like objects (`.failure`
        is '' for an answer); `answer(item or None)` is what an asker gets for it, a failed
        item out of retries included. Only an item someone asks for is retried."""
        batch = self.out[batch_id]
        batch.ended = True
        conf = self.stages[batch.stage]
        out = Sorted()
        for cid in batch.ids:
            if self.where.get(cid) != batch_id:
                continue  # sent again in a later batch since
            item = items.get(cid)
            failure = "errored" if item is None else item.failure
            req = self.requests.get(cid)
            if failure:
                out.failed[failure] = out.failed.get(failure, 0) + 1
                if req is None:
                    continue  # nobody waits for it: asked again, it is fetched again
            if failure and self.tries.get(cid, 0) < conf.max_item_retries:
                self.tries[cid] = self.tries.get(cid, 0) + 1
                if conf.retry == "online":
                    out.retry_online[cid] = req
                else:
                    del self.where[cid]
                    self.waiting[batch.stage][cid] = Waiting(req, now)
                    out.requeued.append(cid)
                continue
            self.ready[cid] = answer(item)
            if req is not None:
                out.deliver[cid] = self.ready[cid]
        return out

    def stats(self) -> dict[str, Any]:
        return {"waiting": {s: len(w) for s, w in self.waiting.items()},
                "open": sum(1 for b in self.out.values() if not b.ended),
                "ended": sum(1 for b in self.out.values() if b.ended)}
