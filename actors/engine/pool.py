"""The pool actor: the thin async shell around the ledger, and the run directory's one writer.

Every worker talks to it through one call, `exchange`: the results of its last batch go in,
its next batch of work comes out, and when there is no work the call waits (an event, not a
poll) until there is, or the run stops. The ledger decides everything as the results arrive;
a single committer task appends what it decided to the run directory, in order, off the
event loop, gathering whatever piled up during the previous commit into the next one.

Fresh, resumed or restarted by Ray, it reads the run directory once, at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from actors.config import PipelineConfig
from actors.engine.ledger import Ledger
from actors.method.stages import StageLogic
from actors.rundir.recovery import load_state
from actors.rundir.writer import Writer

# Records decided but not yet committed before a worker's exchange waits for the committer:
# the bound that makes a slow disk slow the workers rather than fill memory.
MAX_UNCOMMITTED = 20_000


class Pool:
    def __init__(self, cfg: PipelineConfig, seeds: list[dict[str, Any]], target: int,
                 stages: StageLogic, out_dir: str, mirror_uri: str | None = None) -> None:
        self.writer = Writer(out_dir, mirror_uri)
        state = load_state(Path(out_dir), self.writer.committed)
        self.ledger = Ledger(cfg, seeds, target, state, stages)
        self.writer.commit(self.ledger.drain())  # tasks rebuilt from committed answers
        self.tasks = self.ledger.tasks            # committed dataset lines
        self.stopping = False
        self.lives: dict[str, str] = {}  # worker name -> the process it runs in now
        self.started = time.time()
        self._changed = asyncio.Event()
        self._committed = asyncio.Event()
        self._committer: asyncio.Task | None = None

    # -- the one call a worker makes -------------------------------------------------------
    async def exchange(self, worker: str, life: str, stage: str, results: list[Any],
                       released: list[str], n: int) -> list[Any]:
        """Take a batch's results (and the tasks it could not do), hand out the next batch:
        up to n prompts (stage 'propose') or tasks. Waits while there is none; [] means the
        run is stopping.

        `life` names the worker's process: the first call from a new life of a worker (Ray
        restarted it) hands out again whatever the earlier life held. Checked here, in the
        same call, because a separate announcement could arrive after the new life's first
        exchange (an async actor does not run calls in the order they were sent) and take
        back the work just handed out, which would then be asked twice."""
        if self.lives.setdefault(worker, life) != life:
            self.lives[worker] = life
            self.ledger.lost(worker)
            self._changed_now()
        if results or released:
            if stage == "propose":
                self.ledger.proposed(worker, results)
            elif stage == "classify":
                self.ledger.classified(worker, results)
            else:
                self.ledger.finished(worker, results)
            if released:
                self.ledger.release(worker, released)
            self._changed_now()
            await self._commit_soon()
            # Workers already waiting for work go first (they were woken just now and run on
            # this yield): the one returning results must not take every new batch in turn.
            await asyncio.sleep(0)
        # A call from a life that has since been replaced waits for nobody: the work it took
        # would be leased to the worker's name and never done.
        while not self.stopping and self.lives[worker] == life:
            work = (self.ledger.sample(worker, n) if stage == "propose"
                    else self.ledger.take(worker, stage, n))
            if work:
                return work
            await self._changed.wait()
        return []

    def _changed_now(self) -> None:
        """Wake every exchange waiting for work (they look again, inside this process)."""
        self._changed.set()
        self._changed = asyncio.Event()

    # -- committing ------------------------------------------------------------------------
    async def _commit_soon(self) -> None:
        """Start the committer if it is idle; wait for it only if too much piled up."""
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(self._commit_all())
        elif self.ledger.batch.size() > MAX_UNCOMMITTED:
            await asyncio.shield(self._committer)

    async def _commit_all(self) -> None:
        while self.ledger.batch:
            batch = self.ledger.drain()
            await asyncio.to_thread(self.writer.commit, batch)
            self.tasks += len(batch.lines["dataset"])
            self._committed.set()
            self._committed = asyncio.Event()

    async def _drained(self) -> None:
        while self._committer is not None and not self._committer.done():
            await asyncio.shield(self._committer)
        if self._committer is not None:
            self._committer.result()  # a commit that failed fails here, naming the file
        if self.ledger.batch:
            self._committer = asyncio.get_running_loop().create_task(self._commit_all())
            await self._drained()

    # -- the driver's view -----------------------------------------------------------------
    async def watch(self, seen: int, timeout: float, min_s: float = 0.5) -> dict[str, Any]:
        """The run's figures once more tasks than `seen` are committed, or after `timeout`;
        never sooner than `min_s`, so a fast run does not turn the driver's watch into a
        stream of calls."""
        start = time.monotonic()
        deadline = start + timeout
        while self.tasks == seen and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._committed.wait(), left)
        if (rest := start + min(min_s, timeout) - time.monotonic()) > 0:
            await asyncio.sleep(rest)
        if self._committer is not None and self._committer.done():
            self._committer.result()  # a broken run directory reaches the driver
        return self.stats()

    def stats(self) -> dict[str, Any]:
        return {**self.ledger.stats(), "tasks": self.tasks,
                "elapsed_s": time.time() - self.started}

    def pool_stats(self) -> dict[str, Any]:
        return self.ledger.pool_stats()

    def stop(self) -> None:
        """No more work goes out; results of work under way are still taken and written."""
        self.ledger.stop_admitting()
        self.stopping = True
        self._changed_now()

    async def finish(self) -> dict[str, Any]:
        """Write everything decided (every finished task, even one waiting on an earlier
        task), close the files; the figures for run.json. Undone work stays pending."""
        self.stop()
        await self._drained()
        batch = self.ledger.close()
        self.tasks += len(batch.lines["dataset"])
        self.writer.commit(batch)
        self.writer.close()
        return {**self.stats(), "pending": self.ledger.pending(),
                "pool": self.ledger.pool_stats()}
