"""The batcher actor: the stages with `delivery: batch` send their requests through it.

A worker's request waits here until its stage's batch is due (batching.py decides), goes out
in one provider batch, and comes back when the batch has ended: the same answer, parsed the
same way, as an online request would get, so the stage logic, records and ids do not change.
The actor lives on the driver's node, owns batches.jsonl, and writes each batch's id and
custom ids there before it polls; on a restart or `--resume` it polls the batches it finds
there instead of submitting their requests again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from typing import Any

from actors.config import ApiModel, PipelineConfig
from actors.engine.batching import BatchBook, Sorted
from actors.engine.limits import cost_usd
from actors.providers.api import Secret
from actors.providers.batch_api import BatchApi, make_batch_api
from actors.providers.client import BUDGET_REACHED, ApiBackend, estimate_tokens
from actors.providers.llm import Completion, Request
from actors.rundir.batchlog import BatchLog, read_batches

log = logging.getLogger(__name__)

HOLDER = "batcher"  # its name at the gate
STAGES = ("propose", "classify", "instances")
RESULT_TRIES = 10  # reads of an ended batch's results before its items count as errored
# The answer to a request still waiting when the run stops: its work stays pending.
CANCELLED = Completion("", "cancelled", "", error="the run stopped before its batch ended: "
                       "--resume polls the same batch")


def batch_stages(cfg: PipelineConfig) -> list[str]:
    """The stages whose requests go in provider batches (none while replaying a cache)."""
    if cfg.cache.replay_only:
        return []
    return [s for s in STAGES if getattr(cfg.stages, s).delivery == "batch"]


class Batcher:
    def __init__(self, cfg: PipelineConfig, out_dir: str, gate: Any,
                 keys: dict[str, Secret | None],
                 prefixes: dict[str, tuple[str, ...]]) -> None:
        self.life = uuid.uuid4().hex
        self.gate = gate
        self.stages = {s: getattr(cfg.stages, s) for s in batch_stages(cfg)}
        self.model_of = {s: conf.model for s, conf in self.stages.items()}
        self.models: dict[str, ApiModel] = {s: cfg.models[m]  # type: ignore[misc]
                                            for s, m in self.model_of.items()}
        self.apis: dict[str, BatchApi] = {
            s: make_batch_api(m, keys.get(self.model_of[s]), prefixes.get(s, ()),
                              stops=tuple(self.stages[s].stop),
                              on_throttle=lambda after, model=self.model_of[s]:
                              gate.throttled.remote(model, after))
            for s, m in self.models.items()}
        self.online = {s: ApiBackend(m, self.model_of[s], keys.get(self.model_of[s]), gate,
                                     prefixes.get(s, ())) for s, m in self.models.items()}
        for backend in self.online.values():
            backend.bind(HOLDER, self.life)
        self.book = BatchBook({s: c.batch for s, c in self.stages.items()},
                              {m: cfg.models[m].batches  # type: ignore[union-attr]
                               for m in self.model_of.values()},
                              lambda stage, cid, req: self.apis[stage].item_bytes(cid, req))
        self.out_dir = out_dir
        self.log = BatchLog(out_dir)
        self.waiters: dict[str, list[asyncio.Future]] = {}
        self.grants: dict[str, int] = {}
        self.tasks: set[asyncio.Task] = set()
        self.refetching: set[str] = set()
        self.status: dict[str, str] = {}  # how a batch an earlier life saw end ended
        self.kick: asyncio.Event | None = None
        self.starting: asyncio.Task | None = None
        self.stopping = False
        self.failure = ""
        self.counts = {"batches": 0, "items": 0, "retried_online": 0, "requeued": 0,
                       "recovered": 0, "cancelled": 0, "failed": {}}

    async def start(self) -> int:
        """Find the batches an earlier life of the run submitted, poll the ones still
        running; returns how many were found. Runs once per life, on the first call (Ray
        restarts a lost batcher by its constructor alone)."""
        if self.starting is None:
            self.starting = asyncio.get_running_loop().create_task(self._start())
        return await self.starting

    async def _start(self) -> int:
        self.kick = asyncio.Event()
        found = read_batches(self.out_dir)
        for bid, rec in found.items():
            if rec["stage"] not in self.stages:
                continue  # the stage is online now: its requests are asked online
            self.status[bid] = rec["status"]
            self.book.known(bid, rec["stage"], rec["ids"], ended=bool(rec["status"]))
            if not rec["status"]:
                self.counts["recovered"] += 1
                self.grants[bid] = await self.gate.acquire_batch.remote(
                    self.model_of[rec["stage"]], HOLDER, self.life, 0.0, True)
                self._spawn(self._poll(rec["stage"], bid))
        self._spawn(self._send())
        return len(found)

    async def complete(self, stage: str, cid: str, req: Request) -> Completion:
        await self.start()
        state = self.book.ask(stage, cid, req, time.monotonic())
        if state == "ready":
            return self.book.take(cid)
        if self.stopping:
            return CANCELLED
        fut = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(cid, []).append(fut)
        if state == "queued":
            self._wake()
        elif state == "ended":
            self._refetch(stage, self.book.batch_of(cid))
        return await fut

    async def stop(self, cancel_batches: bool) -> dict[str, Any]:
        """The run stops: waiting requests are answered 'cancelled' (their work stays
        pending for --resume). With `cancel_batches` (the target is reached) the batches
        still running are cancelled at the provider, so the run pays only for what ended."""
        self.stopping = True
        for futs in self.waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(CANCELLED)
        self.waiters.clear()
        if cancel_batches:
            for bid, batch in self.book.out.items():
                if not batch.ended:
                    try:
                        await self.apis[batch.stage].cancel(bid)
                        self.counts["cancelled"] += 1
                    except Exception as exc:  # noqa: BLE001 - it ends on its own
                        log.warning("could not cancel batch %s: %s", bid, exc)
        return self.stats()

    def stats(self) -> dict[str, Any]:
        return {**self.book.stats(), **self.counts, "failure": self.failure}

    # ------------------------------------------------------------------ the shell's work

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _wake(self) -> None:
        if self.kick is not None:
            self.kick.set()

    async def _send(self) -> None:
        """Sends each batch as it falls due; sleeps until a request arrives, a batch ends
        or the oldest request's `max_wait_s` is up."""
        assert self.kick is not None
        while not self.stopping:
            now = time.monotonic()
            for stage, model in self.model_of.items():
                while batch := self.book.due(stage, model, now):
                    self._spawn(self._submit(stage, batch))
            self.kick.clear()
            wait = self.book.wait_s(time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.kick.wait(), None if wait == float("inf")
                                       else wait + 0.01)

    def _worst_usd(self, stage: str, batch: list[tuple[str, Request]]) -> float:
        m = self.models[stage]
        return m.batches.price_factor * sum(
            cost_usd(m.price, estimate_tokens(req.prompt), req.max_tokens) for _, req in batch)

    async def _submit(self, stage: str, batch: list[tuple[str, Request]]) -> None:
        ids = [cid for cid, _ in batch]
        model = self.model_of[stage]
        backoff = 1.0
        while True:
            grant = await self.gate.acquire_batch.remote(model, HOLDER, self.life,
                                                         self._worst_usd(stage, batch))
            if grant is None:
                self.book.refused(ids, Completion("", "cancelled", self.models[stage].label,
                                                  error=BUDGET_REACHED))
                self._deliver(ids)
                return
            try:
                bid = await self.apis[stage].submit(batch)
                break
            except Exception as exc:  # noqa: BLE001 - the SDK retried; the gate counts it
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.warning("batch submission failed (%s items): %s", len(ids), error)
                self.gate.settle_batch.remote(grant, 0.0, 0, {}, error,
                                              self.apis[stage].take_faults())
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                if self.stopping:
                    self.book.not_sent(ids, time.monotonic())
                    return
        try:
            self.log.submitted(bid, stage, model, ids)  # before the first poll
        except Exception as exc:  # noqa: BLE001 - the disk: nothing may run unrecorded
            self.failure = str(exc)
            log.error("%s; cancelling batch %s", exc, bid)
            await self.apis[stage].cancel(bid)
            raise
        self.book.sent(stage, bid, ids)
        self.grants[bid] = grant
        self.counts["batches"] += 1
        self.counts["items"] += len(ids)
        self._spawn(self._poll(stage, bid))

    async def _poll(self, stage: str, bid: str) -> None:
        api, every = self.apis[stage], self.stages[stage].batch.poll_s
        while True:
            await asyncio.sleep(every)
            try:
                state = await api.state(bid)
            except Exception as exc:  # noqa: BLE001 - asked again at the next poll
                log.warning("batch %s: state unknown (%s)", bid, str(exc)[:200])
                continue
            if state.status != "in_progress":
                break
        items = await self._results(stage, bid) if state.status == "ended" else {}
        if state.status != "ended":
            log.warning("batch %s %s: %s", bid, state.status, state.message)
        now = time.monotonic()
        answer = self._answerer(stage, bid, state.message)
        done = self.book.ended(bid, items, now, answer)
        self.log.ended(bid, state.status, state.counts)
        answered = [c for cid, c in done.deliver.items() if c.finish_reason != "error"]
        self.gate.settle_batch.remote(self.grants.pop(bid), sum(c.cost_usd for c in answered),
                                      len(answered), done.failed, "", api.take_faults())
        for kind, n in done.failed.items():
            self.counts["failed"][kind] = self.counts["failed"].get(kind, 0) + n
        self.counts["requeued"] += len(done.requeued)
        self._hand_out(stage, done)

    def _hand_out(self, stage: str, done: Sorted) -> None:
        """An ended batch's answers to their askers; its failed items asked again."""
        self._deliver(list(done.deliver))
        for cid, req in done.retry_online.items():
            self._spawn(self._online(stage, cid, req))
        self._wake()

    async def _results(self, stage: str, bid: str) -> dict[str, Any]:
        """An ended batch's items, asked again at the poll interval while reading fails;
        after RESULT_TRIES, none (its items count as errored and are retried)."""
        if self.status.get(bid) == "failed":
            return {}
        for _ in range(RESULT_TRIES):
            try:
                return await self.apis[stage].results(bid)
            except Exception as exc:  # noqa: BLE001
                log.warning("batch %s: results not read (%s)", bid, str(exc)[:200])
                await asyncio.sleep(self.stages[stage].batch.poll_s)
        return {}

    def _refetch(self, stage: str, bid: str) -> None:
        """Items of a batch that ended in an earlier life are asked again: its results are
        read again from the provider (they are kept there for weeks)."""
        if bid in self.refetching:
            return
        self.refetching.add(bid)

        async def again() -> None:
            try:
                items = await self._results(stage, bid)
                self._hand_out(stage, self.book.ended(bid, items, time.monotonic(),
                                                      self._answerer(stage, bid, "")))
            finally:
                self.refetching.discard(bid)

        self._spawn(again())

    async def _online(self, stage: str, cid: str, req: Request) -> None:
        self.counts["retried_online"] += 1
        self.book.answered(cid, await self.online[stage].complete(req))
        self._deliver([cid])

    def _answerer(self, stage: str, bid: str, why: str) -> Any:
        model = self.models[stage]

        def answer(item: Any) -> Completion:
            if item is None or item.failure:
                failure = "errored" if item is None else item.failure
                message = why if item is None else item.message
                return Completion("", "error", model.label, error=(
                    f"batch {bid}: item {failure}" + (f": {message}" if message else "")))
            c = item.completion
            online = cost_usd(model.price, c.prompt_tokens, c.completion_tokens,
                              c.cache_read_tokens, c.cache_write_tokens)
            cost = online * model.batches.price_factor
            return dataclasses.replace(c, cost_usd=cost, batch_id=bid,
                                       batch_saved_usd=online - cost)

        return answer

    def _deliver(self, ids: list[str]) -> None:
        for cid in ids:
            futs = self.waiters.pop(cid, [])
            if not futs:
                continue
            answer = self.book.take(cid)
            for fut in futs:
                if not fut.done():
                    fut.set_result(answer)
