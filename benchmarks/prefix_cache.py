"""Time per classify and instance call on the embedded model, without and with the prefix cache.

The classify prompt carries 31 examples (about 1,100 tokens in chat form); on one thread reading
it takes seconds. Calls from different stages interleave on one model instance, so llama.cpp's
own reuse of the last prompt rarely helps; the RAM cache restores the saved prefix instead.

    python benchmarks/prefix_cache.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from actors.config import LocalModel, Pipeline
from actors.llm import LocalModelWorker, make_request
from actors.prompts import load_template

ROOT = Path(__file__).resolve().parent.parent
TASKS = [
    "Summarize the paragraph in one sentence.",
    "Is this email spam or not spam?",
    "Sort these numbers in ascending order.",
    "Tell me whether the review is positive or negative.",
    "Suggest three names for a hiking club.",
    "Decide if the statement is a fact or an opinion.",
]


def timed_round(worker: LocalModelWorker, cfg: Pipeline) -> tuple[float, list[float]]:
    cls = load_template(ROOT / "prompts", "classify", cfg.stages.classify.mode)
    inst = load_template(ROOT / "prompts", "instances_input_first", cfg.stages.instances.mode)
    start, latencies = time.perf_counter(), []
    for task in TASKS:  # interleaved, as the stages interleave on a shared instance
        for tpl, dec in ((cls, cfg.stages.classify), (inst, cfg.stages.instances)):
            latencies.append(worker._run(make_request(tpl.render(instruction=task), dec, 0))
                             .latency_s)
    return time.perf_counter() - start, latencies


def main() -> None:
    cfg = Pipeline()
    cfg.stages.classify.mode = "chat"
    results = {}
    for cache_mb in (0, 1024):
        worker = LocalModelWorker(LocalModel(cache_mb=cache_mb))
        if cache_mb:
            timed_round(worker, cfg)  # warm: the cache fills on the first round
        wall, lat = timed_round(worker, cfg)
        results[cache_mb] = wall
        print(f"cache_mb={cache_mb:5d} calls={len(lat)} wall_s={wall:.2f} "
              f"median_call_s={statistics.median(lat):.3f}")
    print(f"speed-up with cache: {results[0] / results[1024]:.1f}x")


if __name__ == "__main__":
    main()
