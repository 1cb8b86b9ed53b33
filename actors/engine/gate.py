"""The gate actor: every API request in the cluster asks it first.

One actor for the run holds each API model's limiter (requests, input and output tokens per
minute, requests in flight, back-off after a 429) and the run's budget, so limits hold across
processes and nodes, not per process. Waiters for one model are served first come, first
served. The arithmetic lives in limits.py; this is the thin async shell around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from typing import Any

from actors.config import ApiModel
from actors.engine.limits import Budget, Grant, ModelLimiter, cost_usd


class Gate:
    def __init__(self, models: dict[str, ApiModel], max_cost: float | None,
                 spent: float = 0.0) -> None:
        self.models = models
        self.limiters = {name: ModelLimiter(m.limits) for name, m in models.items()}
        self.budget = Budget(max_cost, spent)
        self.lines: dict[str, deque[asyncio.Future]] = {name: deque() for name in models}
        self.in_line: dict[str, dict[str, int]] = {name: {} for name in models}
        self.freed: dict[str, asyncio.Event] = {}
        self.ids = itertools.count(1)
        self.failures_in_row = dict.fromkeys(models, 0)
        self.last_error = dict.fromkeys(models, "")
        self.requests: dict[str, dict[str, int]] = {name: {} for name in models}
        self.faults: dict[str, dict[str, int]] = {name: {} for name in models}
        self.lives: dict[str, str] = {}  # holder -> the process it runs in now
        # Provider batches (delivery: batch): submitted and not ended, per model; grant ->
        # (model, holder, worst-case cost reserved).
        self.batches_out = dict.fromkeys(models, 0)
        self.batch_grants: dict[int, tuple[str, str, float]] = {}

    async def acquire(self, model: str, holder: str, input_tokens: int,
                      output_tokens: int) -> int | None:
        """A grant id once the request may start; None when the budget does not allow it."""
        line = self.lines[model]
        loop = asyncio.get_running_loop()
        turn: asyncio.Future = loop.create_future()
        line.append(turn)
        self.in_line[model][holder] = self.in_line[model].get(holder, 0) + 1
        if len(line) == 1:
            turn.set_result(None)
        try:
            await turn
            while True:
                wait, grant = self._try(model, holder, input_tokens, output_tokens)
                if wait == 0:
                    return grant
                freed = self.freed.setdefault(model, asyncio.Event())
                freed.clear()
                # A release or a 429 may change the answer: look again at least every second.
                timeout = 1.0 if math.isinf(wait) else min(wait, 1.0)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(freed.wait(), timeout)
        finally:
            self.in_line[model][holder] -= 1
            was_first = bool(line) and line[0] is turn
            line.remove(turn)
            if was_first and line:
                line[0].set_result(None)

    def _try(self, model: str, holder: str, input_tokens: int,
             output_tokens: int) -> tuple[float, int | None]:
        """(0, grant id) when the request may start now; (seconds, None) to wait first (inf:
        until a request in flight settles); (0, None) when the budget refuses it."""
        wait = self.limiters[model].wait(time.monotonic(), input_tokens, output_tokens)
        if wait > 0:
            return wait, None
        worst = cost_usd(self.models[model].price, input_tokens, output_tokens)
        verdict = self.budget.reserve(worst)
        if verdict != "ok":
            return (math.inf if verdict == "wait" else 0.0), None
        grant = Grant(next(self.ids), holder, input_tokens, output_tokens, cost=worst)
        self.limiters[model].take(time.monotonic(), grant)
        self.requests[model][holder] = self.requests[model].get(holder, 0) + 1
        return 0.0, grant.id

    async def acquire_many(self, model: str, holder: str, life: str,
                           sizes: list[tuple[int, int]]) -> tuple[list[int | None], bool]:
        """Grants for a batch, in order: the first as `acquire` gives it, then as many more
        as fit at once with nobody waiting ahead; the caller asks again for the rest. One call
        per batch instead of one per request keeps the gate off the critical path. With
        them, whether the holder may hand slots on (`handoff`).

        The first call from a new `life` of a holder (Ray restarted its actor) frees the
        slots the earlier life held: in the same call, so no late announcement can free the
        new life's slots instead."""
        self._life(holder, life)
        grants = [await self.acquire(model, holder, *sizes[0])]
        for size in sizes[1:]:
            if grants[-1] is None or self.lines[model]:
                break
            wait, grant = self._try(model, holder, *size)
            if wait > 0 or grant is None:
                break
            grants.append(grant)
        return grants, self.handoff(model, holder)

    def handoff(self, model: str, holder: str) -> bool:
        """Whether `holder` may give a finished request's slot straight to its own next
        request and tell the gate afterwards (settle_many's 'handed'), saving two
        calls a request. Only where no rule needs to see each request start: no per-minute
        limit, no back-off after a 429, no budget cap; and only while the holder holds no
        more than its share of the model's cap, or nobody else waits for a slot."""
        lim = self.limiters[model]
        if lim.windows or lim.factor < 1.0 or lim.paused_until > time.monotonic() \
                or self.budget.max_usd is not None:
            return False
        others = {h for h, n in self.in_line[model].items() if n and h != holder}
        if not others:
            return True
        holders = others | {g.holder for g in lim.in_flight.values()}
        held = sum(1 for g in lim.in_flight.values() if g.holder == holder)
        return held <= lim.max_in_flight / len(holders)

    def _life(self, holder: str, life: str) -> None:
        if self.lives.setdefault(holder, life) != life:
            self.lives[holder] = life
            self.lost(holder)

    async def acquire_batch(self, model: str, holder: str, life: str, worst_usd: float,
                            recovered: bool = False) -> int | None:
        """A grant to submit one provider batch, once the model has fewer than
        `batches.max_batches_in_progress` out and the budget holds the batch's worst case;
        None when the budget refuses it. A batch an earlier life submitted (`recovered`)
        is out already: it is counted and reserved without waiting."""
        self._life(holder, life)
        limit = self.models[model].batches.max_batches_in_progress
        while not recovered:
            verdict = "full" if self.batches_out[model] >= limit else \
                self.budget.reserve(worst_usd)
            if verdict == "ok":
                break
            if verdict == "refused":
                return None
            freed = self.freed.setdefault(model, asyncio.Event())
            freed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(freed.wait(), 1.0)
        if recovered:
            self.budget.reserved += worst_usd
        self.batches_out[model] += 1
        grant = next(self.ids)
        self.batch_grants[grant] = (model, holder, worst_usd)
        return grant

    def settle_batch(self, grant_id: int, cost_usd: float, answered: int,
                     failed: dict[str, int], error: str = "",
                     http_faults: dict[str, int] | None = None) -> None:
        """A batch ended (or its submission failed): what it cost, how its items fared, and
        the HTTP faults its calls met (the SDK retried them)."""
        if (held := self.batch_grants.pop(grant_id, None)) is None:
            return
        model, holder, worst = held
        self._count_faults(model, http_faults or {})
        self.batches_out[model] -= 1
        self.budget.settle(worst, cost_usd)
        n = answered + sum(failed.values())
        self.requests[model][holder] = self.requests[model].get(holder, 0) + n
        self._count_faults(model, {f"batch_{kind}": k for kind, k in failed.items()})
        if answered:
            self.failures_in_row[model] = 0
        elif n or error:
            self.failures_in_row[model] += max(n, 1)
            self.last_error[model] = (error or f"every item of a batch failed: {failed}")[:300]
        for name in self.models:
            self._wake(name)

    def settle_many(self, model: str, holder: str,
                    items: list[tuple[int, dict[str, float], str, dict[str, int], str]]
                    ) -> bool:
        """What became of grants: 'done' (the request ended, its slot is free), 'handed' (it
        ended and its slot went on to the holder's next request, see `handoff`) or 'unused'
        (the holder no longer needed it). Returns whether the holder may hand on."""
        for grant_id, usage, error, faults, how in items:
            if how == "handed":
                self.budget.settle(0.0, usage.get("cost_usd", 0.0))
                self.requests[model][holder] = self.requests[model].get(holder, 0) + 1
                self._outcome(model, error)
            elif how == "unused":
                if (grant := self.limiters[model].release(grant_id)) is not None:
                    self.budget.settle(grant.cost, 0.0)
                    self.requests[model][holder] -= 1
                self._wake(model)
            else:
                self.settle(model, grant_id, usage, error)
            self._count_faults(model, faults)
        return self.handoff(model, holder)

    def _count_faults(self, model: str, faults: dict[str, int]) -> None:
        for kind, n in faults.items():
            self.faults[model][kind] = self.faults[model].get(kind, 0) + n

    def settle(self, model: str, grant_id: int, usage: dict[str, float], error: str = "") -> None:
        """The request ended (answered, or failed after the SDK's retries); `usage` holds its
        tokens and the cost its client computed from them."""
        grant = self.limiters[model].release(grant_id, usage.get("prompt_tokens", 0)
                                             + usage.get("cache_read_tokens", 0)
                                             + usage.get("cache_write_tokens", 0),
                                             usage.get("completion_tokens", 0))
        if grant is not None:
            self.budget.settle(grant.cost, usage.get("cost_usd", 0.0))
        self._outcome(model, error)
        for name in self.models:  # a settled cost may let another model's request fit
            self._wake(name)

    def _outcome(self, model: str, error: str) -> None:
        if error:
            self.failures_in_row[model] += 1
            self.last_error[model] = error[:300]
        else:
            self.failures_in_row[model] = 0

    def throttled(self, model: str, retry_after: float | None) -> None:
        self.limiters[model].throttled(time.monotonic(), retry_after)

    def lost(self, holder: str) -> int:
        """An actor (re)started: the slots its earlier life held are free again."""
        gone = 0
        for grant_id in [g for g, (_, h, _) in self.batch_grants.items() if h == holder]:
            model, _, worst = self.batch_grants.pop(grant_id)
            self.batches_out[model] -= 1
            self.budget.settle(worst, 0.0)
        for model, lim in self.limiters.items():
            for grant in lim.release_holder(holder):
                self.budget.settle(grant.cost, 0.0)
                gone += 1
            self._wake(model)
        return gone

    def _wake(self, model: str) -> None:
        if model in self.freed:
            self.freed[model].set()

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        dead = {m: f"the last {n} requests failed (last error: {self.last_error[m]})"
                for m, n in self.failures_in_row.items()
                if n >= self.models[m].fail_after}
        return {"models": {m: {**lim.stats(now), "requests": sum(self.requests[m].values()),
                               "requests_by_actor": self.requests[m],
                               "waiting": len(self.lines[m]),
                               "batches_in_progress": self.batches_out[m],
                               "failures_in_row": self.failures_in_row[m],
                               "faults": self.faults[m]}
                           for m, lim in self.limiters.items()},
                "budget": self.budget.stats(), "budget_exhausted": self.budget.exhausted,
                "dead": dead, "faults": self._faults_by_kind()}

    def _faults_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for faults in self.faults.values():
            for kind, n in faults.items():
                out[kind] = out.get(kind, 0) + n
        return out
