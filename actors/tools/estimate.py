"""`selfinstruct run --dry-run`: requests, tokens, cost and time for a target, before spending.

The funnel works backwards from the target: kept tasks need admitted tasks (instance stage
success rate), admitted tasks need candidates (dedup keep rate), candidates need raw
instructions (filter pass rate), instructions need prompts (instructions per response).
Prompt sizes come from rendering the real templates with real seeds; output sizes and rates
are priors, or a finished run's observed figures with `--rates-from RUN_DIR`.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from actors.config import ApiModel, PipelineConfig
from actors.engine.limits import cost_usd
from actors.method.prompts import Shot, Template, number_shots, sample_shots

CHARS_PER_TOKEN = 4.0  # English prose through BPE tokenizers; the API's counts replace it in a run
CACHE_MIN_TOKENS = 1024  # Anthropic caches no prefix shorter than this (longer for some models)


@dataclass(frozen=True)
class Rates:
    instructions_per_response: float = 6.0
    filter_pass: float = 0.9
    dedup_keep: float = 0.8
    task_success: float = 0.8
    propose_output_tokens: float = 200.0
    classify_output_tokens: float = 2.0
    instances_output_tokens: float = 180.0
    latency_s: float = 5.0          # per request, for the time estimate


def observed_rates(run_dir: str | Path, prior: Rates = Rates()) -> Rates:
    """The funnel and token figures a run actually saw (priors where it saw too little)."""
    run = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    counts, usage = run.get("counts", {}), run.get("usage", {})

    def rate(stage: str, default: float) -> float:
        s = counts.get(stage, {})
        return s["accepted"] / s["in"] if s.get("in", 0) >= 5 else default

    responses = counts.get("propose", {}).get("accepted", 0)
    per_response = (counts.get("filter", {}).get("in", 0) / responses if responses >= 5
                    else prior.instructions_per_response)
    out: dict[str, float] = {}
    for stage in ("propose", "classify", "instances"):
        parts = [u for k, u in usage.items() if k.split(":", 1)[0] == stage]
        n = sum(u.get("requests", 0) for u in parts)
        if n >= 5:
            out[f"{stage}_output_tokens"] = sum(u.get("completion_tokens", 0) for u in parts) / n
    return replace(prior, instructions_per_response=per_response,
                   filter_pass=rate("filter", prior.filter_pass),
                   dedup_keep=rate("dedup", prior.dedup_keep),
                   task_success=rate("task", prior.task_success), **out)


def prompt_tokens(cfg: PipelineConfig, templates: dict[str, Template], seeds: list[dict[str, Any]]
                  ) -> dict[str, tuple[float, float]]:
    """Per stage: (tokens per prompt, of which a fixed prefix), from rendered prompts."""
    def tokens(prompt: str | list[dict[str, str]]) -> float:
        text = prompt if isinstance(prompt, str) else "".join(m["content"] for m in prompt)
        return len(text) / CHARS_PER_TOKEN

    def fixed(t: Template) -> float:
        if t.mode == "completion":
            return len(t.fixed_prefix) / CHARS_PER_TOKEN
        return sum(len(c) for _, c in t.messages[:-1]) / CHARS_PER_TOKEN

    rng = random.Random(cfg.run.seed)
    human = [Shot(s["id"], s["instruction"]) for s in seeds]
    p = cfg.stages.propose
    sample = [s["instruction"] for s in seeds[:50]] or ["Describe a task."]
    propose = [tokens(templates["propose"].render(shots=number_shots(
        [s.instruction for s in sample_shots(rng, human, [], p.num_shots, 0)])))
        for _ in range(20)]
    classify = [tokens(templates["classify"].render(instruction=i)) for i in sample]
    inst_t = templates["instances_input_first"]
    instances = [tokens(inst_t.render(instruction=i)) for i in sample]
    return {"propose": (sum(propose) / len(propose), fixed(templates["propose"])),
            "classify": (sum(classify) / len(classify), fixed(templates["classify"])),
            "instances": (sum(instances) / len(instances), fixed(inst_t))}


def estimate(cfg: PipelineConfig, target: int, templates: dict[str, Template],
             seeds: list[dict[str, Any]], rates: Rates = Rates()) -> dict[str, Any]:
    admitted = target / max(rates.task_success, 1e-6)
    candidates = admitted / max(rates.dedup_keep, 1e-6)
    raw = candidates / max(rates.filter_pass, 1e-6)
    requests = {"propose": raw / max(rates.instructions_per_response, 1e-6),
                "classify": admitted, "instances": admitted}
    sizes = prompt_tokens(cfg, templates, seeds)
    stages: dict[str, Any] = {}
    per_model: dict[str, dict[str, float]] = {}
    for stage, n in requests.items():
        conf = getattr(cfg.stages, stage)
        model = cfg.models[conf.model]
        size, prefix = sizes[stage]
        out_tokens = getattr(rates, f"{stage}_output_tokens")
        cached = (isinstance(model, ApiModel) and model.provider == "anthropic"
                  and model.prompt_cache and stage != "propose" and prefix >= CACHE_MIN_TOKENS)
        read = prefix * max(n - 1, 0) if cached else 0.0
        write = prefix if cached else 0.0
        uncached_in = n * size - read - write
        online = cost_usd(model.price, uncached_in, n * out_tokens, read, write) \
            if isinstance(model, ApiModel) else 0.0
        batch = online * model.batches.price_factor if isinstance(model, ApiModel) else 0.0
        stages[stage] = {"model": conf.model, "delivery": conf.delivery,
                         "requests": math.ceil(n), "input_tokens": round(n * size),
                         "output_tokens": round(n * out_tokens),
                         "cached_input_tokens": round(read),
                         "cost_usd": round(batch if conf.delivery == "batch" else online, 4),
                         "online_usd": round(online, 4), "batch_usd": round(batch, 4)}
        m = per_model.setdefault(conf.model, {"requests": 0.0, "input": 0.0, "output": 0.0})
        m["requests"] += n
        m["input"] += n * size
        m["output"] += n * (conf.max_tokens if isinstance(model, ApiModel) else out_tokens)
    minutes = {name: model_minutes(cfg.models[name], m, rates.latency_s)
               for name, m in per_model.items()}
    known = [v for v in minutes.values() if v is not None]
    online_minutes = max(known) if known else None
    api_stages = [s for s in stages if isinstance(cfg.models[stages[s]["model"]], ApiModel)]
    batched = [s for s in api_stages if stages[s]["delivery"] == "batch"]
    return {"target": target, "rates": asdict(rates), "stages": stages,
            "requests": sum(s["requests"] for s in stages.values()),
            "input_tokens": sum(s["input_tokens"] for s in stages.values()),
            "output_tokens": sum(s["output_tokens"] for s in stages.values()),
            "cost_usd": round(sum(s["cost_usd"] for s in stages.values()), 4),
            "online_cost_usd": round(sum(s["online_usd"] for s in stages.values()), 4),
            "batch_cost_usd": round(sum(s["batch_usd"] for s in stages.values()), 4),
            "minutes_by_model": {k: None if v is None else round(v, 1)
                                 for k, v in minutes.items()},
            "minutes": _rounded(batch_minutes(cfg, stages, batched, online_minutes)
                                if batched else online_minutes),
            "online_minutes": _rounded(online_minutes),
            "batch_minutes": _rounded(batch_minutes(cfg, stages, api_stages, online_minutes))
            if api_stages else None}


def _rounded(minutes: float | None) -> float | None:
    return None if minutes is None else round(minutes, 1)


def batch_minutes(cfg: PipelineConfig, stages: dict[str, Any], batched: list[str],
                  online_minutes: float | None) -> float:
    """Time with `batched` stages in provider batches: each wave waits a batch's turnaround.
    A stage's wave is what its batches in flight hold (a proposal wave also cannot run past
    machine_shot_lag prompts ahead); the stages overlap, so the longest chain of waves sets
    the pace, plus one turnaround for each later batched stage the last wave goes through."""
    waves = []
    for stage in batched:
        conf = getattr(cfg.stages, stage)
        model = cfg.models[conf.model]
        assert isinstance(model, ApiModel)
        size = min(conf.batch.max_requests, model.batches.max_requests_per_batch)
        if stage == "propose":
            size = min(size, cfg.stages.propose.machine_shot_lag)
        waves.append(math.ceil(stages[stage]["requests"] / (size * conf.batch.max_in_flight))
                     * model.batches.turnaround_s)
    turnaround = max(cfg.models[stages[s]["model"]].batches.turnaround_s  # type: ignore[union-attr]
                     for s in batched)
    minutes = (max(waves) + (len(batched) - 1) * turnaround) / 60
    return max(minutes, online_minutes or 0.0) if len(batched) < 3 else minutes


def model_minutes(model: Any, load: dict[str, float], latency_s: float) -> float | None:
    """The slowest of: each per-minute limit (output counted at max_tokens, as reserved), and
    the requests in flight at the given latency. None for the embedded model."""
    if not isinstance(model, ApiModel):
        return None
    lim = model.limits
    bounds = [load["requests"] * latency_s / lim.max_in_flight / 60]
    for limit, amount in ((lim.requests_per_minute, load["requests"]),
                          (lim.input_tokens_per_minute, load["input"]),
                          (lim.output_tokens_per_minute, load["output"])):
        if limit:
            bounds.append(amount / limit)
    return max(bounds)


def render(est: dict[str, Any]) -> str:
    """A table a person reads before spending."""
    rows = [f"dry run for {est['target']} tasks (no request sent)",
            f"  {'stage':<10} {'model':<14} {'delivery':<8} {'requests':>9} {'input tok':>11} "
            f"{'output tok':>11} {'online USD':>10} {'batch USD':>10}"]
    for stage, s in est["stages"].items():
        rows.append(f"  {stage:<10} {s['model']:<14} {s['delivery']:<8} {s['requests']:>9,} "
                    f"{s['input_tokens']:>11,} {s['output_tokens']:>11,} "
                    f"{s['online_usd']:>10.4f} {s['batch_usd']:>10.4f}")
    rows.append(f"  {'total':<34} {est['requests']:>9,} {est['input_tokens']:>11,} "
                f"{est['output_tokens']:>11,} {est['online_cost_usd']:>10.4f} "
                f"{est['batch_cost_usd']:>10.4f}")
    rows.append(f"  cost as configured: ${est['cost_usd']:.4f}")
    online, batch = est["online_minutes"], est["batch_minutes"]
    rows.append("  time online: " + (
        f"about {online} min (limits and requests in flight, at "
        f"{est['rates']['latency_s']} s a request)" if online is not None
        else "not estimated for the embedded model"))
    if batch is not None:
        rows.append(f"  time with every API stage in batches: about {batch / 60:.1f} h (at "
                    f"models.*.batches.turnaround_s a batch; providers allow up to 24 h)")
    if est["minutes"] is not None and est["minutes"] not in (online, batch):
        rows.append(f"  time as configured: about {est['minutes'] / 60:.1f} h")
    return "\n".join(rows)
