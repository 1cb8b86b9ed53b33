"""The pool actor: owns the ROUGE-L index, the few-shot sampler and admission to later stages.

It admits a candidate only while the tasks written plus the tasks in flight are below the
target, so the run stops with exactly the target in dataset.jsonl and no paid-for work is thrown
away; undecided candidates wait in a bounded backlog, and when it is full the pool stops taking
from the candidate queue, which makes the proposers wait (backpressure).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from ray.util.queue import Empty

from actors.config import Pipeline
from actors.dedup_index import RougeIndex
from actors.prompts import Shot, sample_shots
from actors.stages import Outcome


@dataclass(frozen=True)
class Rates:
    candidates_per_prompt: float
    keep: float
    task: float


def prompts_wanted(rates: Rates, capacity: int, outstanding: int, backlog: int,
                   prompts_out: int, limit: int) -> int:
    """How many new prompts the target still needs.

    Admissions still wanted: the free room now, plus the admitted tasks expected to fail at the
    instance stage (each failure frees room again). Supply: the backlog and the prompts in
    flight, at the observed candidates per prompt and keep rate.
    """
    want = capacity + outstanding * (1.0 - rates.task)
    per_prompt = max(rates.candidates_per_prompt * rates.keep, 0.05)
    supply = backlog * rates.keep + prompts_out * per_prompt
    if want <= 0 or supply >= want:
        return 0
    return max(0, min(limit, math.ceil((want - supply) / per_prompt)))


class Pool:
    def __init__(self, cfg: Pipeline, seeds: list[dict[str, Any]], target: int,
                 candidates: Any, accepted: Any, writer: Any) -> None:
        d = cfg.dedup
        self.index = RougeIndex(d.threshold, d.keep_at_threshold, d.neighbour_floor,
                                d.max_neighbours)
        self.human = [Shot(s["id"], s["instruction"]) for s in seeds]
        for s in seeds:
            self.index.add(s["id"], s["instruction"])
        self.machine: list[Shot] = []
        self.rng = random.Random(cfg.run.seed)
        self.cfg = cfg
        self.target = target
        self.candidates, self.accepted, self.writer = candidates, accepted, writer
        self.backlog: deque[dict[str, Any]] = deque()
        self.backlog_cap = cfg.queues.batch_size * 4
        self.outstanding = 0
        self.done = 0
        self.decided = 0
        self.kept = 0
        self.failed = 0
        self.received = 0
        self.prompts_out = 0
        self.prompts_done = 0
        self.stopping = False
        self.admitting = True
        self._exited: asyncio.Event | None = None

    def sample(self, n: int) -> list[list[Shot]]:
        """Shots for up to n prompts: only as many as the target still needs, counting what is
        already waiting and what prompts in flight are expected to bring (near the end of a
        run this keeps proposers from paying for candidates nobody will use)."""
        if not self.admitting:
            return []
        k = prompts_wanted(self._rates(), self.capacity(), self.outstanding, len(self.backlog),
                           self.prompts_out, n)
        self.prompts_out += k
        p = self.cfg.stages.propose
        return [sample_shots(self.rng, self.human, self.machine, p.num_shots, p.num_machine_shots)
                for _ in range(k)]

    def delivered(self, prompts: int) -> None:
        """A proposer's prompts are answered and their candidates queued."""
        self.prompts_out -= prompts
        self.prompts_done += prompts

    def _rates(self) -> Rates:
        """Observed so far, with priors until there is enough to go on."""
        return Rates(
            candidates_per_prompt=self.received / self.prompts_done
            if self.prompts_done >= 5 else 5.0,
            keep=self.kept / self.decided if self.decided >= 10 else 0.5,
            task=self.done / (self.done + self.failed) if self.done + self.failed >= 5 else 0.7)

    def settle(self, ok: int, failed: int) -> None:
        """Later stages report finished tasks, which frees room under the target."""
        self.outstanding -= ok + failed
        self.done += ok
        self.failed += failed

    def capacity(self) -> int:
        return self.target - self.done - self.outstanding if self.admitting else 0

    def stats(self) -> dict[str, Any]:
        return {"pool_size": len(self.index), "machine": len(self.machine),
                "backlog": len(self.backlog), "outstanding": self.outstanding,
                "prompts_sampled": self.prompts_done + self.prompts_out,
                "done": self.done, "lcs_computed": self.index.lcs_computed,
                "index_mb": round(self.index.memory_bytes() / 2**20, 2)}

    async def run(self) -> None:
        self._exited = asyncio.Event()
        try:
            await self._loop()
        finally:
            self._exited.set()

    async def _loop(self) -> None:
        while not self.stopping:
            # Once admission has stopped, keep emptying the queue so no proposer stays blocked.
            if len(self.backlog) < self.backlog_cap or not self.admitting:
                try:
                    batch = await self.candidates.get_async(timeout=0.2)
                    self.backlog.extend(batch)
                    self.received += len(batch)
                except Empty:
                    pass
            else:
                await asyncio.sleep(0.05)
            await self._decide()

    async def _decide(self) -> None:
        out, forward = Outcome(), []
        take = min(len(self.backlog), max(self.capacity(), 0))
        if take:
            cands = [self.backlog.popleft() for _ in range(take)]
            # Every decided candidate gets the next number; kept ones keep it as their task id,
            # so ids follow acceptance order (with gaps where candidates were rejected).
            ids = [f"task_{self.decided + k:06d}" for k in range(take)]
            self.decided += take
            decisions = self.index.check_batch(list(zip(ids, [c["instruction"] for c in cands],
                                                        strict=True)))
            for task_id, cand, decision in zip(ids, cands, decisions, strict=True):
                rouge = {"max": decision.max_score, "max_exact": decision.max_exact,
                         "neighbours": [{"id": nb.id, "score": nb.score}
                                        for nb in decision.neighbours]}
                if decision.keep:
                    self.kept += 1
                    self.machine.append(Shot(task_id, cand["instruction"]))
                    self.outstanding += 1
                    forward.append({**cand, "id": task_id, "rouge": rouge})
                else:
                    top = decision.neighbours[0].id if decision.neighbours else "the pool"
                    out.reject("dedup", "rouge_l",
                               f"ROUGE-L {decision.max_score:.4f} to {top}",
                               {**cand, "rouge": rouge})
        out.accept("dedup", len(forward))
        if out.rejected or forward:
            await self.writer.write.remote(out.as_dict())
        for i in range(0, len(forward), self.cfg.queues.batch_size):
            await self.accepted.put_async(forward[i:i + self.cfg.queues.batch_size])

    def stop_admitting(self) -> None:
        self.admitting = False

    async def finish(self) -> int:
        """Stop; record every candidate still waiting as unprocessed, not lost."""
        self.admitting = False
        self.stopping = True
        if self._exited is not None:
            await self._exited.wait()
        while True:
            try:
                self.backlog.extend(await self.candidates.get_async(timeout=0.5))
            except Empty:
                break
        out = Outcome()
        for cand in self.backlog:
            out.reject("dedup", "unprocessed", "run stopped before the pool decided it", cand)
        self.backlog.clear()
        if out.rejected:
            await self.writer.write.remote(out.as_dict())
        return len(out.rejected)
