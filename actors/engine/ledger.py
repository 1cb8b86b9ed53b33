"""The run's state, in one place: admission, shot sampling, prompt order, the ROUGE-L index,
the task board, and the order in which records reach the run directory.

Pure: no Ray, no files. The pool actor (pool.py) is its thin async shell; it feeds the ledger
the workers' results and commits what the ledger hands it, in the order handed. Everything is
decided here the moment a result arrives, so one result travels once, worker to pool, and
the run directory is read once, at start-up, into `RunState` (recovery.py).

Admission: a candidate is admitted only while the tasks finished plus the tasks in flight are
below the target, so the run stops with exactly the target written and no paid-for work thrown
away. Candidates are decided in prompt order (sequencer.py), so task ids, shots and the dataset
are a function of the seed and the model's answers, whatever the timing.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from actors.config import PipelineConfig
from actors.engine.sequencer import Board, PromptSequence
from actors.engine.usage import USAGE_KEYS
from actors.method.dedup_index import RougeIndex
from actors.method.ids import prompt_number, task_id
from actors.method.prompts import Shot, sample_shots
from actors.method.stages import Outcome, StageLogic
from actors.rundir.recovery import RunState, completion_of
from actors.rundir.runlog import DATA_FILES, add_counts


@dataclass(frozen=True)
class Yields:
    """What each stage yields, observed so far (priors until there is enough to go on)."""

    candidates_per_prompt: float
    keep: float
    task: float


def prompts_wanted(rates: Yields, capacity: int, outstanding: int, backlog: int,
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


@dataclass
class Batch:
    """Records for the run directory, in the order they were decided, with the count and
    usage deltas their commit carries."""

    lines: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {name: [] for name in DATA_FILES})
    counts: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.lines.values()) or bool(self.counts)

    def size(self) -> int:
        return sum(len(v) for v in self.lines.values())

    def meta(self) -> dict[str, Any]:
        return {"counts": self.counts, "usage": self.usage}


def _stage(counts: dict[str, Any], name: str) -> dict[str, Any]:
    return counts.setdefault(name, {"in": 0, "accepted": 0, "rejected": 0, "reasons": {}})


class Ledger:
    """One owner for the run's state. Workers' results come in through `proposed`,
    `classified` and `finished`; work goes out through `sample` and `take`; `drain` hands the
    records to commit, in order."""

    def __init__(self, cfg: PipelineConfig, seeds: list[dict[str, Any]], target: int,
                 state: RunState, stages: StageLogic) -> None:
        self.cfg, self.target = cfg, target
        d = cfg.dedup
        self.index = RougeIndex(d.threshold, d.keep_at_threshold, d.neighbour_floor,
                                d.max_neighbours)
        self.human = [Shot(s["id"], s["instruction"]) for s in seeds]
        for s in seeds:
            self.index.add(s["id"], s["instruction"])
        self.machine: list[Shot] = []
        self.machine_prompt: list[int] = []  # the prompt each machine task came from
        for task in state.accepted:  # in acceptance order, so later decisions are the same
            self.index.add(task["id"], task["instruction"])
            self._add_shot(task)
        self.prompts = PromptSequence(cfg.stages.propose.machine_shot_lag, state.prompts,
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
        self.admitting = True
        # What is written, and in what order.
        self.keys = set(state.response_ids)
        self.counts: dict[str, Any] = state.committed.counts
        self.usage: dict[str, Any] = state.committed.usage
        self.tasks = state.committed.lines.get("dataset", 0)
        self.rejection_seq = state.rejections
        self.written = set(state.dataset_ids)
        self.failed_ids = set(state.failed_ids)
        self.order = deque(t["id"] for t in state.accepted
                           if t["id"] not in self.written and t["id"] not in self.failed_ids)
        self.held: dict[str, dict[str, Any]] = {}
        self.batch = Batch()
        for task, rec in state.rebuild:  # answered and committed, the dataset line was not:
            # that line alone is new (its response and verdicts are in the files already)
            outcome = stages.instance_outcome(task, completion_of(rec)).as_dict()
            self._record({"dataset": outcome.get("dataset", [])})
        self._flush_in_order()
        self._decide()  # candidates a resumed run left undecided, as far as there is room

    def _add_shot(self, task: dict[str, Any]) -> None:
        self.machine.append(Shot(task["id"], task["instruction"]))
        self.machine_prompt.append(task["prompt"])

    # -- work going out --------------------------------------------------------------------
    def sample(self, worker: str, n: int) -> list[tuple[int, list[Shot]]]:
        """Prompt numbers and shots for up to n prompts, only as many as the target still
        needs, counting what waits and what prompts in flight are expected to bring."""
        if not self.admitting:
            return []
        new = prompts_wanted(self.yields(), self.capacity(), len(self.board),
                             self.prompts.waiting(), self.prompts.out(), n)
        return [(k, self.shots(k)) for k in self.prompts.issue(worker, new, n)]

    def shots(self, k: int) -> list[Shot]:
        """Prompt k's shots: a function of the seed and k, and of the machine tasks accepted
        from prompts before k - lag, which are decided before k is handed out."""
        p = self.cfg.stages.propose
        rng = random.Random(f"{self.cfg.run.seed}:{k}")
        machine = self.machine[:bisect.bisect_left(self.machine_prompt, k - p.machine_shot_lag)]
        return sample_shots(rng, self.human, machine, p.num_shots, p.num_machine_shots)

    def take(self, worker: str, stage: str, n: int) -> list[dict[str, Any]]:
        """Lease up to n tasks waiting for `stage`."""
        self.board.wake(self.target - self.done)
        return self.board.take(worker, stage, n)

    def yields(self) -> Yields:
        return Yields(
            candidates_per_prompt=self.received / self.prompts_done
            if self.prompts_done >= 5 else 5.0,
            keep=self.kept / self.decided if self.decided >= 10 else 0.5,
            task=self.done / (self.done + self.failed) if self.done + self.failed >= 5 else 0.7)

    def capacity(self) -> int:
        return self.target - self.done - len(self.board) if self.admitting else 0

    # -- results coming in -----------------------------------------------------------------
    def proposed(self, worker: str, units: list[dict[str, Any]]) -> int:
        """Proposal units (one per prompt); returns how many were new. A prompt answered
        twice (its first copy is here already) is dropped whole."""
        new = 0
        for unit in units:
            if unit["key"] in self.keys or not self.prompts.deliver(
                    worker, prompt_number(unit["key"]), unit["candidates"]):
                continue
            new += 1
            self.prompts_done += 1
            self.received += len(unit["candidates"])
            self._record(unit)
        self._decide()
        return new

    def classified(self, worker: str, results: list[tuple[dict[str, Any], dict[str, Any]]]
                   ) -> int:
        """(labelled task, unit) pairs; a task settled or labelled already is not taken twice."""
        new = 0
        for task, unit in results:
            if unit["key"] in self.keys or task["id"] not in self.board.tasks:
                continue
            new += 1
            self._record(unit)
            self.board.labelled(task)
        return new

    def finished(self, worker: str, results: list[tuple[str, dict[str, Any]]]) -> int:
        """(task id, unit) pairs: the task is done, with a dataset line or a rejection."""
        new = 0
        for tid, unit in results:
            if unit["key"] in self.keys or not self.board.settle(tid):
                continue
            new += 1
            self._record(unit)
            ok = bool(unit["dataset"])
            self.done += ok
            self.failed += not ok
        self._flush_in_order()
        self._decide()  # a failed task frees room: candidates waiting for it are decided now
        return new

    def release(self, worker: str, tids: list[str]) -> None:
        """Not done (cancelled as the run stops): back to the front of their stage."""
        self.board.release(worker, tids)

    def lost(self, worker: str) -> dict[str, int]:
        """An actor (re)started: whatever its earlier life held goes back to be done again."""
        return {"prompts": self.prompts.lost(worker), "tasks": self.board.lost(worker)}

    def stop_admitting(self) -> None:
        self.admitting = False

    # -- deciding --------------------------------------------------------------------------
    def _decide(self) -> None:
        """Decide waiting candidates, in prompt order, while there is room: a rejected one
        leaves the room for the next."""
        while cands := self.prompts.take(max(self.capacity(), 0)):
            self._decide_batch(cands)

    def _decide_batch(self, cands: list[dict[str, Any]]) -> None:
        out = Outcome()
        # Every decided candidate gets the next number; kept ones keep it as their task id,
        # so ids follow acceptance order (with gaps where candidates were rejected).
        ids = [task_id(self.decided + k) for k in range(len(cands))]
        self.decided += len(cands)
        # check_batch adds the kept ones to the index, in order.
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
                out.admitted.append(task)
            else:
                top = decision.neighbours[0].id if decision.neighbours else "the pool"
                out.reject("dedup", "rouge_l", f"ROUGE-L {decision.max_score:.4f} to {top}",
                           {**cand, "rouge": rouge})
        out.accept("dedup", len(out.admitted))
        self._record(out.as_dict())
        for task in out.admitted:
            self.board.add("classify", task)

    # -- what is written -------------------------------------------------------------------
    def _record(self, unit: dict[str, Any]) -> None:
        """A unit's records into the batch being built, and its counts into the totals."""
        lines, counts, usage = self.batch.lines, {}, {}
        if unit.get("key"):
            self.keys.add(unit["key"])
        for name, n in unit.get("accepted", {}).items():
            s = _stage(counts, name)
            s["accepted"] += n
            s["in"] += n
        for rec in unit.get("rejected", []):
            s = _stage(counts, rec["stage"])
            s["rejected"] += 1
            s["in"] += 1
            s["reasons"][rec["rule"]] = s["reasons"].get(rec["rule"], 0) + 1
            self.rejection_seq += 1
            lines["rejected"].append({"id": f"rej_{self.rejection_seq:07d}", **rec})
            if rec["stage"] == "task":
                self.failed_ids.add(rec["item"]["id"])
        cached = set(unit.get("cached", []))
        for rec in unit.get("responses", []):
            u = usage.setdefault(f"{rec['stage']}:{rec['model']}", {})
            add_counts(u, {"requests": 1, "cache_hits": int(rec["id"] in cached),
                           "errors": int(rec["finish_reason"] == "error"),
                           "batch_requests": int(bool(rec.get("batch_id"))),
                           **{k: rec.get(k, 0) for k in USAGE_KEYS},
                           "faults": rec.get("faults", {})})
            lines["responses"].append(rec)
        lines["candidates"] += unit.get("candidates", [])
        for rec in unit.get("admitted", []):
            lines["accepted"].append(rec)
            self.order.append(rec["id"])
        for rec in unit.get("dataset", []):
            if rec["id"] not in self.written:
                self.held[rec["id"]] = rec
        self._count(counts, usage)

    def _count(self, counts: dict[str, Any], usage: dict[str, Any]) -> None:
        add_counts(self.batch.counts, counts)
        add_counts(self.batch.usage, usage)
        add_counts(self.counts, counts)
        add_counts(self.usage, usage)

    def _flush_in_order(self, final: bool = False) -> None:
        """Move finished tasks to the dataset in acceptance order (all of them when final)."""
        ready = []
        while self.order and (self.order[0] in self.held or self.order[0] in self.failed_ids):
            ready.append(self.order.popleft())
        if final:
            ready += [tid for tid in self.order if tid in self.held]
            self.order = deque(tid for tid in self.order if tid not in self.held)
        written = [self.held.pop(tid) for tid in ready if tid in self.held]
        if written:
            self.batch.lines["dataset"] += written
            self.written.update(rec["id"] for rec in written)
            self.tasks += len(written)
            self._count({"task": {"in": len(written), "accepted": len(written),
                                  "rejected": 0, "reasons": {}}}, {})

    def drain(self) -> Batch:
        """The records decided since the last drain, to commit next."""
        batch, self.batch = self.batch, Batch()
        return batch

    def close(self) -> Batch:
        """A stop: every finished task is written, even those waiting on an earlier one."""
        self._flush_in_order(final=True)
        return self.drain()

    # -- figures ---------------------------------------------------------------------------
    def pending(self) -> dict[str, int]:
        """Work the run directory holds undone, as `RunState.pending` reads it back."""
        stages = [stage for stage, tid in self.board.dormant if tid in self.board.tasks]
        for stage, q in self.board.queues.items():
            stages += [stage] * sum(1 for tid in q if tid in self.board.tasks)
        for held in self.board.leases.values():
            stages += [stage for tid, stage in held.items() if tid in self.board.tasks]
        return {"candidates": self.prompts.waiting(),
                "unclassified": stages.count("classify"),
                "classified": stages.count("instances")}

    def stats(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "finished": self.tasks + len(self.held),
                "target": self.target, "stages": self.counts, "usage": self.usage,
                "pool_size": len(self.index),
                "waiting": {"dedup": self.prompts.waiting(),
                            **{stage: len(q) for stage, q in self.board.queues.items()}}}

    def pool_stats(self) -> dict[str, Any]:
        return {"pool_size": len(self.index), "machine": len(self.machine),
                "waiting_candidates": self.prompts.waiting(), **self.board.counts(),
                "prompts_sampled": self.prompts.next, "prompts_answered": self.prompts_done,
                "done": self.done, "lcs_computed": self.index.lcs_computed,
                "index_mb": round(self.index.memory_bytes() / 2**20, 2)}
