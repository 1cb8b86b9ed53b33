"""Time per classify and instance call on the embedded model, without and with the prefix cache.

The classify prompt carries 31 examples (about 1,100 tokens in chat form); on one thread reading
it takes seconds. Calls from different stages interleave on one model instance, so llama.cpp's
own reuse of the last prompt rarely helps; the worker restores the saved state of the prompt's
template prefix instead (read once, the first time a prompt needs it), and the few-shot part of
each stage's prompt is the same for every task.

What a run meets is prompts the cache has not seen: a warm-up round on some tasks fills it, then
a round on other tasks is timed (their prompts share only the template with the cached ones).
The same warm-up tasks asked again are shown beside it (no faster: a prompt never reuses more
than its prefix, so that its answer is the same wherever it is asked). Each cached round is
compared with an uncached round on the same tasks.

    python benchmarks/prefix_cache.py
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from actors.config import LocalModel, PipelineConfig
from actors.method.prompts import Template, load_template
from actors.providers.llm import make_request
from actors.providers.local_model import LocalModelWorker, Prefix, fixed_text, warm_steps

ROOT = Path(__file__).resolve().parent.parent
WARM = [
    "Summarize the paragraph in one sentence.",
    "Is this email spam or not spam?",
    "Sort these numbers in ascending order.",
    "Tell me whether the review is positive or negative.",
]
UNSEEN = [
    "Suggest three names for a hiking club.",
    "Decide if the statement is a fact or an opinion.",
    "Translate the sentence into French.",
    "Classify the animal as a mammal, bird or fish.",
]


def templates(cfg: PipelineConfig) -> tuple[Template, Template]:
    return (load_template(ROOT / "prompts", "classify", cfg.stages.classify.mode),
            load_template(ROOT / "prompts", "instances_input_first", cfg.stages.instances.mode))


def timed_round(worker: LocalModelWorker, cfg: PipelineConfig, tasks: list[str]
                ) -> tuple[float, list[float]]:
    cls, inst = templates(cfg)
    start, latencies = time.perf_counter(), []
    for task in tasks:  # interleaved, as the stages interleave on a shared instance
        for tpl, dec in ((cls, cfg.stages.classify), (inst, cfg.stages.instances)):
            latencies.append(worker._run(make_request(tpl.render(instruction=task), dec, 0))
                             .latency_s)
    return time.perf_counter() - start, latencies


def report(label: str, wall: float, latencies: list[float]) -> None:
    print(f"{label:34s} calls={len(latencies)} wall_s={wall:6.2f} "
          f"median_call_s={statistics.median(latencies):.3f}", flush=True)


def main() -> None:
    cfg = PipelineConfig()
    cfg.stages.classify.mode = "chat"
    plain = LocalModelWorker(LocalModel(cache_mb=0))
    base = {}
    for name, tasks in (("warm-up tasks", WARM), ("unseen tasks", UNSEEN)):
        wall, lat = timed_round(plain, cfg, tasks)
        base[name] = wall
        report(f"no cache, {name}", wall, lat)
    del plain
    cached = LocalModelWorker(LocalModel(cache_mb=1024))
    # The prefixes it keeps (a run tells each replica stage_prefixes, some to read ahead).
    asyncio.run(cached.warm([Prefix(stage, fixed_text(t), tuple(warm_steps(t)))
                             for stage, t in zip(("classify", "instances"), templates(cfg),
                                                 strict=True)]))
    timed_round(cached, cfg, WARM)  # the warm-up: the cache fills
    wall_unseen, lat = timed_round(cached, cfg, UNSEEN)
    report("cache, unseen tasks", wall_unseen, lat)
    wall_repeat, lat = timed_round(cached, cfg, WARM)
    report("cache, warm-up tasks again", wall_repeat, lat)
    print(f"speed-up with the cache on prompts it has not seen: "
          f"{base['unseen tasks'] / wall_unseen:.1f}x; on the warm-up prompts again: "
          f"{base['warm-up tasks'] / wall_repeat:.1f}x")


if __name__ == "__main__":
    main()
