"""The pool actor: owns the ROUGE-L index, the few-shot sampler, admission and the task board.

It admits a candidate only while the tasks finished plus the tasks in flight are below the
target, so the run stops with exactly the target in dataset.jsonl and no paid-for work is thrown
away. It plans how many prompts to hand out from the yields it has seen, decides candidates in
prompt order (sequencer.py), and leases admitted tasks to the classifier and instance actors.
Fresh, resumed or restarted by Ray, it starts from what the run directory has committed.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.exceptions import RayActorError
from ray.util.queue import Empty

from actors.config import Pipeline
from actors.dedup_index import RougeIndex
from actors.ids import task_id
from actors.prompts import Shot, sample_shots
from actors.recovery import load_state
from actors.runlog import recover
from actors.sequencer import Board, Prompts
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
                 candidates: Any, writer: Any, out_dir: str) -> None:
        self.cfg = cfg
        self.seeds = seeds
        self.target = target
        self.dir = Path(out_dir)
        self.candidates, self.writer = candidates, writer
        self.stopping = False
        self.admitting = True
        self._exited: asyncio.Event | None = None
        self._load()

    def _load(self) -> None:
        """Everything from the committed files (a fresh run, a resume, a restart)."""
        d = self.cfg.dedup
        self.index = RougeIndex(d.threshold, d.keep_at_threshold, d.neighbour_floor,
                                d.max_neighbours)
        self.human = [Shot(s["id"], s["instruction"]) for s in self.seeds]
        for s in self.seeds:
            self.index.add(s["id"], s["instruction"])
        state = load_state(self.dir, recover(self.dir, truncate=False))
        self.machine: list[Shot] = []
        self.machine_prompt: list[int] = []  # the prompt each machine task came from
        for task in state.accepted:  # in acceptance order, so later decisions are the same
            self.index.add(task["id"], task["instruction"])
            self._add_shot(task)
        self.prompts = Prompts(self.cfg.stages.propose.machine_shot_lag, state.prompts,
                               state.pending_candidates)
        self.board = Board()
        for stage, task in state.open_tasks:  # in acceptance order
            self.board.add(stage, task)
        self.done = state.succeeded
        self.failed = len(state.failed_ids)
        self.decided = state.decided
        self.kept = len(state.accepted)
        self.received = state.candidates
        self.prompts_done = len(state.prompts)

    def _add_shot(self, task: dict[str, Any]) -> None:
        self.machine.append(Shot(task["id"], task["instruction"]))
        self.machine_prompt.append(task["prompt"])

    # -- proposals ---------------------------------------------------------------------------
    def sample(self, worker: str, n: int) -> list[tuple[int, list[Shot]]]:
        """Prompt numbers and shots for up to n prompts, only as many as the target still
        needs, counting what waits and what prompts in flight are expected to bring."""
        if not self.admitting:
            return []
        new = prompts_wanted(self._rates(), self.capacity(), len(self.board),
                             self.prompts.waiting(), self.prompts.out(), n)
        return [(k, self.shots(k)) for k in self.prompts.issue(worker, new, n)]

    def shots(self, k: int) -> list[Shot]:
        """Prompt k's shots: a function of the seed and k, and of the machine tasks accepted
        from prompts before k - lag, which are decided before k is handed out."""
        p = self.cfg.stages.propose
        rng = random.Random(f"{self.cfg.run.seed}:{k}")
        machine = self.machine[:bisect.bisect_left(self.machine_prompt, k - p.machine_shot_lag)]
        return sample_shots(rng, self.human, machine, p.num_shots, p.num_machine_shots)

    def lost(self, worker: str) -> dict[str, int]:
        """An actor (re)started: whatever its earlier life held goes back to be done again."""
        return {"prompts": self.prompts.lost(worker), "tasks": self.board.lost(worker)}

    def _rates(self) -> Rates:
        """Observed so far, with priors until there is enough to go on."""
        return Rates(
            candidates_per_prompt=self.received / self.prompts_done
            if self.prompts_done >= 5 else 5.0,
            keep=self.kept / self.decided if self.decided >= 10 else 0.5,
            task=self.done / (self.done + self.failed) if self.done + self.failed >= 5 else 0.7)

    # -- tasks -------------------------------------------------------------------------------
    async def take(self, worker: str, stage: str, n: int) -> list[dict[str, Any]]:
        """Lease up to n tasks waiting for `stage`; waits briefly when there are none."""
        for _ in range(10):
            self.board.wake(self.target - self.done)
            tasks = self.board.take(worker, stage, n)
            if tasks or self.stopping:
                return tasks
            await asyncio.sleep(0.05)
        return []

    def labelled(self, tasks: list[dict[str, Any]]) -> None:
        for task in tasks:
            self.board.labelled(task)

    def settle(self, results: dict[str, bool]) -> None:
        """Finished tasks free room under the target."""
        for tid, ok in results.items():
            if self.board.settle(tid):
                self.done += ok
                self.failed += not ok

    def release(self, worker: str, tids: list[str]) -> None:
        self.board.release(worker, tids)

    def capacity(self) -> int:
        return self.target - self.done - len(self.board) if self.admitting else 0

    def stats(self) -> dict[str, Any]:
        return {"pool_size": len(self.index), "machine": len(self.machine),
                "waiting_candidates": self.prompts.waiting(), **self.board.counts(),
                "prompts_sampled": self.prompts.next, "prompts_answered": self.prompts_done,
                "done": self.done, "lcs_computed": self.index.lcs_computed,
                "index_mb": round(self.index.memory_bytes() / 2**20, 2)}

    # -- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        self._exited = asyncio.Event()
        try:
            while not self.stopping:
                try:
                    for entry in await self.candidates.get_async(timeout=0.2):
                        if self.prompts.deliver(entry["worker"], entry["prompt"],
                                                entry["candidates"]):
                            self.prompts_done += 1
                            self.received += len(entry["candidates"])
                except Empty:
                    pass
                await self._decide()
        finally:
            self._exited.set()

    async def _decide(self) -> None:
        cands = self.prompts.take(max(self.capacity(), 0))
        if not cands:
            return
        out, admitted = Outcome(), []
        # Every decided candidate gets the next number; kept ones keep it as their task id,
        # so ids follow acceptance order (with gaps where candidates were rejected).
        ids = [task_id(self.decided + k) for k in range(len(cands))]
        self.decided += len(cands)
        decisions = self.index.check_batch(list(zip(ids, [c["instruction"] for c in cands],
                                                    strict=True)))
        for tid, cand, decision in zip(ids, cands, decisions, strict=True):
            rouge = {"max": decision.max_score, "max_exact": decision.max_exact,
                     "neighbours": [{"id": nb.id, "score": nb.score}
                                    for nb in decision.neighbours]}
            if decision.keep:
                self.kept += 1
                task = {**cand, "id": tid, "rouge": rouge}
                self._add_shot(task)
                admitted.append(task)
            else:
                top = decision.neighbours[0].id if decision.neighbours else "the pool"
                out.reject("dedup", "rouge_l", f"ROUGE-L {decision.max_score:.4f} to {top}",
                           {**cand, "rouge": rouge})
        out.accept("dedup", len(admitted))
        out.admitted = admitted
        # Committed before any stage can see the tasks, so no answer outruns its admission.
        try:
            await self.writer.write.remote([out.as_dict()])
        except RayActorError:
            # The writer died, so whether this batch was committed is unknown: wait for Ray to
            # restart it, then start again from what the files say.
            await self.writer.stats.remote()
            self._load()
            return
        for task in admitted:
            self.board.add("classify", task)

    def stop_admitting(self) -> None:
        self.admitting = False

    async def finish(self) -> dict[str, int]:
        """Stop; what is still waiting stays pending in the run directory for --resume."""
        self.admitting = False
        self.stopping = True
        if self._exited is not None:
            await self._exited.wait()
        return {"candidates": self.prompts.waiting(), "tasks": len(self.board)}
