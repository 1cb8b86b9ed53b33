"""The driver: prepare the run directory, start Ray and the actors, watch, stop, write run.json.

A thin shell. The run's state lives in the pool actor (ledger.py); restart decisions are
supervisor.py's; what run.json says is summary.py's. The watch loop sleeps in `ray.wait` until
the pool reports progress, a stage loop ends or a relaunch is due: no polling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError
from ray.util.metrics import Counter, Gauge
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from actors import logs
from actors.config import ApiModel, PipelineConfig
from actors.engine.batcher import Batcher, batch_stages
from actors.engine.gate import Gate
from actors.engine.host import Part, host_name, place, stage_groups
from actors.engine.metrics import RunMetrics
from actors.engine.pool import Pool
from actors.engine.raynode import NodeWatch, send_ray_output
from actors.engine.run_inputs import (
    api_keys,
    cache_prefixes,
    load_all_seeds,
    load_templates,
    used_models,
    versions,
)
from actors.engine.summary import fault_counts, request_errors, run_summary
from actors.engine.supervisor import DIED, RAISED, RETURNED, UNAVAILABLE, Supervisor
from actors.engine.usage import saved_usd, spent_usd
from actors.engine.workers import Classifier, Instancer, Proposer
from actors.method.stages import StageLogic
from actors.providers.client import client_for
from actors.providers.local_model import stage_prefixes, start_local_replicas
from actors.rundir.prepare import check_out_dir, lock_run_dir, prepare_remote, write_run_json
from actors.rundir.remote import Mirror, is_remote, staging_dir
from actors.rundir.resume import check_resume, fingerprint
from actors.rundir.runlog import recover

WATCH_S = 2.0  # the longest the driver waits between looks at the gate, the clock and signals


class _StopFlag:
    """SIGINT/SIGTERM ask for a graceful stop; a second signal exits at once."""

    def __init__(self) -> None:
        self.reason = ""

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.reason:
            raise KeyboardInterrupt
        self.reason = "interrupted" if signum == signal.SIGINT else "terminated"


# Ray's log monitor tails the workers' log files for drivers that take their output, which
# ours does not (log_to_driver=False), and by default lists the log directory every 0.1 s;
# once every 5 s saves about 0.5% of a core while a run waits (benchmarks/README.md, idle).
QUIET_LOG_MONITOR = {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
                     "LOG_NAME_UPDATE_INTERVAL_S": "5"}


def init_ray(cfg: PipelineConfig) -> None:
    """Join the cluster the config or RAY_ADDRESS names (a job's driver has it set), or start
    a new local Ray: never silently join some other cluster running on this machine."""
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = dict(namespace="selfinstruct", logging_level="WARNING",
                                  log_to_driver=False)
    if address and address != "local":
        ray.init(address=address, **kwargs)
        return
    added = {k: v for k, v in QUIET_LOG_MONITOR.items() if k not in os.environ}
    os.environ.update(added)  # read by the log monitor that ray.init starts
    try:
        ray.init(address="local", num_cpus=cfg.ray.num_cpus or os.cpu_count(),
                 include_dashboard=False, _metrics_export_port=cfg.ray.metrics_export_port,
                 **kwargs)
    finally:
        for key in added:
            del os.environ[key]


RESTARTABLE = {"max_restarts": 5, "max_task_retries": 0}


def _how(ref: Any) -> tuple[str, str]:
    """How a finished stage loop ended: (supervisor kind, error line)."""
    try:
        ray.get(ref)
        return RETURNED, ""
    except ActorUnavailableError as exc:
        return UNAVAILABLE, str(exc).splitlines()[0][:300]
    except RayActorError as exc:
        return DIED, str(exc).splitlines()[0][:300]
    except Exception as exc:  # noqa: BLE001 - an actor's loop raised: stop and report why
        # Ray's text is a header and the remote traceback; the last line says what went wrong.
        said = [line for line in str(exc).splitlines() if line.strip()]
        return RAISED, (said[-1] if said else repr(exc))[:300]


def run_pipeline(cfg: PipelineConfig, out_dir: str | None = None, target: int | None = None,
                 progress: bool = True, resume: bool = False,
                 max_cost: float | None = None, resume_command: str = "") -> dict[str, Any]:
    """Run the whole method until `target` tasks are written; returns what run.json holds
    (with `resume_command` in it if the run failed)."""
    uri = out_dir or cfg.run.out
    mirror = Mirror(uri) if is_remote(uri) else None
    out = staging_dir(uri) if mirror else Path(uri).resolve()  # where this node works
    target = target or cfg.run.target
    cfg.run.out, cfg.run.target = uri if mirror else str(out), target
    cfg.run.max_cost = max_cost if max_cost is not None else cfg.run.max_cost
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
    tasks_before = committed.lines.get("dataset", 0)
    log.info("run_start", out=str(out), target=target, seeds=len(seeds), resumed=resume,
             tasks=tasks_before)
    base = {"status": "running", "target": target, "out": cfg.run.out, "resumes": resumes,
            "method": method, "seeds": len(seeds), "versions": versions(),
            "config": cfg.model_dump()}
    write_run_json(out, {**base, "timings": {"started": started}})
    if mirror:
        mirror.put_file(out / "run.json")

    send_ray_output(out / "ray.log")
    init_ray(cfg)
    node = NodeWatch()
    stage_logic = StageLogic(cfg, templates)
    used = used_models(cfg)
    replicas = {name: start_local_replicas(m, name, stage_prefixes(cfg, templates, name))
                for name, m in used.items()
                if not isinstance(m, ApiModel) and not cfg.cache.replay_only}
    cache_path = cfg.cache.path or str(out / "cache.sqlite")
    # The pool (the run's state and its files) and the gate live on the driver's node, where
    # --out is, so losing another node loses neither; in one process unless told otherwise.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    api = {name: m for name, m in used.items() if isinstance(m, ApiModel)}
    pinned = {"num_cpus": 0, "max_restarts": 3, "scheduling_strategy": here}
    hub: dict[str, Part] = {"pool": (Pool, (cfg, seeds, target, stage_logic, str(out),
                                           mirror.uri if mirror else None))}
    if api:
        hub["gate"] = (Gate, (api, cfg.run.max_cost, spent_usd(committed.usage)))
    parts: dict[str, Any] = {}
    processes: dict[str, Any] = {}
    for group in ([hub] if cfg.actors.share_processes else [{k: v} for k, v in hub.items()]):
        handles, processes[host_name(group).lower()] = place(group, pinned)
        parts.update(handles)
    pool, gate = parts["pool"], parts.get("gate")

    batcher = None
    if batched := batch_stages(cfg):
        batcher = ray.remote(num_cpus=0, max_restarts=3, max_concurrency=100_000,
                             scheduling_strategy=here)(Batcher).remote(
            cfg, str(out), gate, keys, {s: cache_prefixes(templates, s) for s in batched})
        found = ray.get(batcher.start.remote())
        if found:
            log.info("batches_found", batches=found)
        processes["batcher"] = batcher

    workers = _start_workers(cfg, stage_logic, pool, processes, lambda stage: client_for(
        cfg, stage, replicas, gate, keys, cache_path, cache_prefixes(templates, stage),
        batcher))
    loops = {name: handle.run.remote() for name, handle in workers.items()}

    flag = _StopFlag()
    old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    deadline = started + cfg.run.max_minutes * 60 if cfg.run.max_minutes else None
    bar = tqdm(total=target, initial=tasks_before, unit="task",
               disable=not progress, file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)
    sup = Supervisor(max_restarts=RESTARTABLE["max_restarts"])
    failure, pool_restarts = "", 0
    stats: dict[str, Any] = {"tasks": tasks_before}
    watch = pool.watch.remote(tasks_before, WATCH_S)
    next_log = next_gate_look = time.time()
    metrics = RunMetrics(Counter, Gauge, {"tasks": tasks_before, "stages": committed.counts,
                                          "usage": committed.usage})
    gstats: dict[str, Any] = {}
    try:
        while not flag.reason:
            now = time.time()
            due = sup.next_due(now)
            wait = WATCH_S + 1.0 if due is None else min(WATCH_S + 1.0, due)
            ready, _ = ray.wait([watch, *loops.values()], num_returns=1, timeout=wait)
            if node.lost(ask=any(ref is not watch for ref in ready)):  # an actor ended
                break
            now = time.time()
            for ref in ready:
                if ref is watch:
                    continue
                name = next(k for k, v in loops.items() if v == ref)
                del loops[name]
                how, error = _how(ref)
                failure, new = sup.ended(name, how, error, now)
                if new:
                    log.warning("actor_died", actor=name, how=how, error=error,
                                restarts=sup.restarts.get(name, 0))
                if failure:
                    log.error("actor_failed", actor=name, error=failure)
                    flag.reason = "failed"
            for name in sup.due(now):
                loops[name] = workers[name].run.remote()
            if watch in ready:
                try:
                    stats = ray.get(watch)
                except RayActorError as exc:  # Ray restarts it from the run directory
                    if node.lost(ask=True):
                        break
                    pool_restarts += 1
                    log.warning("actor_died", actor="pool", restarts=pool_restarts,
                                error=str(exc).splitlines()[0][:300])
                    if pool_restarts > 3:
                        failure = f"pool died {pool_restarts} times: {exc}"
                        flag.reason = "failed"
                    time.sleep(1.0)
                except Exception as exc:  # noqa: BLE001 - the run directory cannot be written
                    failure = str(exc).splitlines()[-1][:500]
                    log.error("run_dir_failed", error=failure)
                    flag.reason = "failed"
                watch = pool.watch.remote(stats["tasks"], WATCH_S)
            else:
                continue
            if "stages" in stats:
                _show(bar, stats, started, bool(api))
                if now >= next_log:
                    next_log = now + 10
                    log.info("progress", tasks=stats["tasks"], target=target,
                             request_errors=request_errors(stats["usage"]),
                             **{f"{k}_accepted": v["accepted"]
                                for k, v in stats["stages"].items()},
                             **{f"{k}_rejected": v["rejected"]
                                for k, v in stats["stages"].items()})
            if stats["tasks"] >= target:
                flag.reason = flag.reason or "target_reached"
            if gate is not None and now >= next_gate_look:
                next_gate_look = now + WATCH_S
                gstats = ray.get(gate.stats.remote())
                if gstats["budget_exhausted"]:
                    flag.reason = flag.reason or "max_cost"
                for name, why in gstats["dead"].items():
                    failure = f"models.{name}: provider unreachable or refusing: {why}"
                    log.error("provider_down", model=name, error=why)
                    flag.reason = "failed"
            metrics.update(stats, gstats)
            if deadline and now > deadline:
                flag.reason = flag.reason or "time_limit"
        log.info("stopping", reason=flag.reason or "ray_lost")
        final = None if node.lost() else _shutdown(
            pool, workers, replicas, loops, log, batcher,
            cancel_batches=flag.reason == "target_reached")
    except RayError:  # a Ray call failed: because the node is gone, or not ours to handle
        if not node.lost(ask=True):
            raise
        final = None
    finally:
        bar.close()
        for s, handler in old.items():
            signal.signal(s, handler)

    alive = not node.lost()
    if not alive:  # no actor can be asked now; none may write the run directory either
        failure = f"{node.reason}; the run stopped, all it committed is kept"
        flag.reason = "failed"
        log.info("ray_lost", error=node.reason)
        node.stop()
    cpu = _cpu_seconds({**processes, **{f"{n}-replica-{i}": r for n, rs in replicas.items()
                                        for i, r in enumerate(rs)}}) if alive else {}
    gate_stats = _informative(gate.stats) if gate is not None and alive else {}
    batch_stats = _informative(batcher.stats) if batcher is not None and alive else {}
    if final is None:  # the pool could not finish: the files are the truth
        from actors.rundir.recovery import load_state

        # Cut a torn batch, as the next start would, only once no writer is left.
        state = load_state(out, recover(out, truncate=not alive))
        pending = state.pending()  # and tasks answered whose lines wait on an earlier task's:
        pending["classified"] += len(state.rebuild)  # --resume writes them, asking no model
        final = {"tasks": state.committed.lines.get("dataset", 0),
                 "stages": state.committed.counts, "usage": state.committed.usage,
                 "pending": pending, "pool": {}}
    metrics.update(final, gate_stats)
    summary = run_summary(
        base, reason=flag.reason, failure=failure, stats=final, pending=final["pending"],
        timings={"started": started, "ended": time.time()}, tasks_before=tasks_before,
        prices={m.label: m.price for m in api.values()}, max_cost=cfg.run.max_cost,
        faults=fault_counts(earlier, final["usage"], gate_stats),
        limits=gate_stats.get("models", {}),
        restarts={**sup.counted(), **({"pool": pool_restarts} if pool_restarts else {})},
        pool=final["pool"], cpu_s=cpu)
    if batch_stats:
        summary["batches"] = batch_stats
    if failure and resume_command:
        summary["resume"] = resume_command
    write_run_json(out, summary)
    if mirror:
        mirror.publish(out)  # dataset.jsonl, run.json, ... beside the segments
    log.info("run_end", status=summary["status"], tasks=summary["tasks"],
             pending=summary["pending"], wall_s=summary["timings"]["wall_s"])
    for handle in [*processes.values(), *[r for rs in replicas.values() for r in rs]
                   ] if alive else []:
        ray.kill(handle)
    return summary


WORKERS = {"proposer": Proposer, "classifier": Classifier, "instancer": Instancer}


def _start_workers(cfg: PipelineConfig, stage_logic: StageLogic, pool: Any,
                   processes: dict[str, Any], client: Any) -> dict[str, Any]:
    """The stage workers, in as few processes as `actors.share_processes` allows: a handle
    per worker name; each process is added to `processes`."""
    a = cfg.actors
    kinds = {"proposer": (a.proposers, a.proposer, "propose"),
             "classifier": (1, a.classifier, "classify"),
             "instancer": (a.instancers, a.instancer, "instances")}
    listed = [(kind, kind if kind == "classifier" else f"{kind}-{i}", res)
              for kind, (count, res, _) in kinds.items() for i in range(count)]
    kind_of = {name: kind for kind, name, _ in listed}
    workers: dict[str, Any] = {}
    for group in stage_groups(listed, a.share_processes):
        # A host asks for what one of its workers would: they ask alike, and one process
        # runs Python on one core at a time.
        options = {**kinds[kind_of[group[0]]][1].options(), **RESTARTABLE}
        if a.spread and any(kind_of[n] != "classifier" for n in group):
            options["scheduling_strategy"] = "SPREAD"
        handles, actor = place({n: (WORKERS[kind_of[n]], (n, stage_logic,
                                                         client(kinds[kind_of[n]][2]), pool))
                                for n in group}, options)
        processes["+".join(group)] = actor
        workers.update(handles)
    return workers


def _show(bar: Any, stats: dict[str, Any], started: float, api: bool) -> None:
    bar.n = stats["tasks"]
    rejected = sum(s["rejected"] for s in stats["stages"].values())
    rate = stats["tasks"] / max(time.time() - started, 1e-9) * 60
    errors = request_errors(stats["usage"])
    bar.set_postfix(rejected=rejected, per_min=f"{rate:.1f}",
                    **({"request_errors": errors} if errors else {}),
                    **({"cost": f"${spent_usd(stats['usage']):.4f}"} if api else {}),
                    **({"batch_saved": f"${saved:.4f}"}
                       if (saved := saved_usd(stats["usage"])) else {}),
                    refresh=False)
    bar.update(0)


def _informative(method: Any) -> dict[str, Any]:
    """An actor's figures for run.json; the files are the truth, so a failure leaves it out."""
    try:
        return ray.get(method.remote(), timeout=30)
    except Exception:  # noqa: BLE001
        return {}


def _cpu_seconds(handles: dict[str, Any]) -> dict[str, float]:
    """CPU seconds each actor's process used (and the driver's): where a run's CPU went."""
    refs = {name: h.__ray_call__.remote(lambda _self: time.process_time())
            for name, h in handles.items()}
    out = {"driver": round(time.process_time(), 3)}
    for name, ref in refs.items():
        with contextlib.suppress(Exception):  # an actor gone already has no figure
            out[name] = round(ray.get(ref, timeout=10), 3)
    return out


def _shutdown(pool: Any, workers: dict[str, Any], replicas: dict[str, list[Any]],
              loops: dict[str, Any], log: Any, batcher: Any = None,
              cancel_batches: bool = False, grace_s: float = 60.0) -> dict[str, Any] | None:
    """Stop handing out work; what is under way finishes (an embedded-model request still
    waiting is answered 'cancelled' and stays pending) and is written; undone work stays
    pending in the run directory for --resume. None if the pool could not finish."""
    pool.stop.remote()
    for r in (r for rs in replicas.values() for r in rs):
        for stage in ("propose", "classify", "instances"):
            r.cancel_pending.remote(stage)
    if batcher is not None:
        with contextlib.suppress(Exception):  # a lost batcher's batches are in batches.jsonl
            log.info("batches_stopped", **ray.get(batcher.stop.remote(cancel_batches),
                                                  timeout=grace_s))
    rest = list(loops.values())
    ray.wait(rest, num_returns=len(rest), timeout=grace_s)
    try:
        final = ray.get(pool.finish.remote(), timeout=grace_s)
        log.info("pool_stopped", **final["pending"])
        return final
    except Exception as exc:  # noqa: BLE001 - the files are the truth; report and go on
        log.warning("pool_stop_failed", error=str(exc)[:300])
        return None
