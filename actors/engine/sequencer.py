"""Work in flight, in an order that does not depend on timing, and leased so none is lost.

`PromptSequence` numbers the proposal prompts and hands their candidates to deduplication in prompt
order, whatever order the answers come back in; prompt k may use as machine shots only the
tasks accepted from prompts before k - lag. So the pool's decisions, the task ids and every
prompt are a function of the seed and the model's answers alone: a run replayed from the
response cache asks the same prompts and writes the same dataset, and a resumed run goes on
exactly as an uninterrupted one would.

`Board` holds admitted tasks until a classifier or instance actor leases them; a lease goes
back on the board if its actor dies, and a late answer for work already re-leased is harmless
(the writer keeps one copy).
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any


class PromptSequence:
    def __init__(self, lag: int, done: set[int] | None = None,
                 pending: dict[int, list[dict[str, Any]]] | None = None) -> None:
        """`done`: prompts already answered; `pending`: their candidates not yet decided."""
        done, pending = done or set(), pending or {}
        self.lag = lag
        self.next = max(done) + 1 if done else 0
        self.reissue = sorted(set(range(self.next)) - done)
        self.cursor = min([*self.reissue, *pending, self.next])
        self.arrived: dict[int, list[dict[str, Any]]] = {
            k: pending.get(k, []) for k in done if k >= self.cursor}
        self.ready: deque[dict[str, Any]] = deque()
        self.leases: dict[str, set[int]] = {}
        self._advance()

    def through(self) -> int:
        """Every prompt below this number has had all its candidates decided."""
        return self.ready[0]["prompt"] if self.ready else self.cursor

    def out(self) -> int:
        return sum(len(s) for s in self.leases.values())

    def issue(self, worker: str, new: int, limit: int) -> list[int]:
        """Up to `limit` prompt numbers: lost ones first (the order waits on them), then up
        to `new` fresh ones, never beyond `lag` ahead of what has been decided."""
        ks: list[int] = []
        while self.reissue and len(ks) < limit:
            ks.append(self.reissue.pop(0))
        fresh = 0
        while len(ks) < limit and fresh < new and self.next < self.through() + self.lag:
            ks.append(self.next)
            self.next += 1
            fresh += 1
        self.leases.setdefault(worker, set()).update(ks)
        return ks

    def deliver(self, worker: str, k: int, candidates: list[dict[str, Any]]) -> bool:
        """Prompt k's candidates; False if they came already (a restarted proposer's copy)."""
        for held in self.leases.values():
            held.discard(k)
        if k in self.reissue:
            self.reissue.remove(k)
        if k < self.cursor or k in self.arrived:
            return False
        self.arrived[k] = candidates
        self._advance()
        return True

    def _advance(self) -> None:
        while self.cursor in self.arrived:
            self.ready.extend(self.arrived.pop(self.cursor))
            self.cursor += 1

    def take(self, n: int) -> list[dict[str, Any]]:
        return [self.ready.popleft() for _ in range(min(n, len(self.ready)))]

    def lost(self, worker: str) -> int:
        """A proposer died: its prompts are asked again, under the same numbers."""
        ks = self.leases.pop(worker, set())
        for k in ks:
            if k >= self.cursor and k not in self.arrived:
                bisect.insort(self.reissue, k)
        return len(ks)

    def waiting(self) -> int:
        return len(self.ready) + sum(len(c) for c in self.arrived.values())


class Board:
    """Admitted tasks waiting for a stage, and who holds which.

    Tasks enter dormant and are woken in acceptance order, no more at a time than the target
    still needs: a run resumed with a smaller target finishes the earliest pending tasks and
    leaves the rest pending, rather than overshooting.
    """

    STAGES = ("classify", "instances")

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.dormant: deque[tuple[str, str]] = deque()
        self.queues: dict[str, deque[str]] = {s: deque() for s in self.STAGES}
        self.leases: dict[str, dict[str, str]] = {}  # worker -> task id -> stage

    def __len__(self) -> int:
        return len(self.tasks)

    def add(self, stage: str, task: dict[str, Any]) -> None:
        """A task newly admitted or found pending on resume; it waits dormant."""
        self.tasks[task["id"]] = task
        self.dormant.append((stage, task["id"]))

    def wake(self, room: int) -> None:
        """Let tasks into their stages until `room` are active."""
        while self.dormant and len(self.tasks) - len(self.dormant) < room:
            stage, tid = self.dormant.popleft()
            if tid in self.tasks:
                self.queues[stage].append(tid)

    def put(self, stage: str, task: dict[str, Any], front: bool = False) -> None:
        self.tasks[task["id"]] = task
        q = self.queues[stage]
        if task["id"] not in q:
            q.appendleft(task["id"]) if front else q.append(task["id"])

    def take(self, worker: str, stage: str, n: int) -> list[dict[str, Any]]:
        q, held = self.queues[stage], self.leases.setdefault(worker, {})
        out = []
        while q and len(out) < n:
            tid = q.popleft()
            held[tid] = stage
            out.append(self.tasks[tid])
        return out

    def _unlease(self, tid: str) -> None:
        for held in self.leases.values():
            held.pop(tid, None)
        for q in self.queues.values():
            if tid in q:
                q.remove(tid)

    def labelled(self, task: dict[str, Any]) -> None:
        """Classified: on to instance generation (ignored if the task already settled)."""
        if task["id"] in self.tasks:
            self._unlease(task["id"])
            self.put("instances", task)

    def settle(self, tid: str) -> bool:
        """Finished; False if it had settled already."""
        self._unlease(tid)
        return self.tasks.pop(tid, None) is not None

    def release(self, worker: str, tids: list[str]) -> None:
        """Not done (cancelled): back to the front of its stage's queue."""
        held = self.leases.get(worker, {})
        for tid in reversed(tids):
            stage = held.pop(tid, None)
            if stage and tid in self.tasks:
                self.put(stage, self.tasks[tid], front=True)

    def lost(self, worker: str) -> int:
        held = list(self.leases.get(worker, {}))
        self.release(worker, held)
        self.leases.pop(worker, None)
        return len(held)

    def counts(self) -> dict[str, int]:
        leased = sum(len(h) for h in self.leases.values())
        return {"outstanding": len(self.tasks), "dormant": len(self.dormant), "leased": leased,
                **{f"waiting_{s}": len(q) for s, q in self.queues.items()}}
