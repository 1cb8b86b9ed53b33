"""run.json's account of a run: what each stage took in, passed and rejected, what is still
pending, whether the counts add up, and what it cost. Pure; the driver writes it, `report`
reads it."""

from __future__ import annotations

from typing import Any

from actors.engine.usage import spent_usd, summarize

STAGE_ORDER = ["propose", "filter", "dedup", "classify", "task", "instances"]


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


def run_summary(base: dict[str, Any], *, reason: str, failure: str, stats: dict[str, Any],
                pending: dict[str, int], timings: dict[str, float], tasks_before: int,
                prices: dict[str, Any], max_cost: float | None, faults: dict[str, int],
                limits: dict[str, Any], restarts: dict[str, int], pool: dict[str, Any],
                cpu_s: dict[str, float]) -> dict[str, Any]:
    """Everything run.json says once a run has stopped."""
    started, ended = timings["started"], timings["ended"]
    stages = stats["stages"]
    costs = summarize(stats["usage"], prices)
    return {
        **base,
        "status": {"target_reached": "completed", "failed": "failed"}.get(reason, "stopped"),
        "stop_reason": reason,
        **({"failure": failure} if failure else {}),
        "tasks": stats["tasks"],
        "timings": {"started": started, "ended": ended, "wall_s": round(ended - started, 3),
                    "tasks_per_min": round((stats["tasks"] - tasks_before)
                                           / max(ended - started, 1e-9) * 60, 3)},
        "counts": {k: stages[k] for k in STAGE_ORDER if k in stages},
        "pending": pending,
        "acceptance": acceptance(stages),
        "checks": flow_checks(stages, pending),
        "usage": stats["usage"],
        **costs,
        "faults": faults,
        "budget": {"max_usd": max_cost, "spent_usd": round(spent_usd(stats["usage"]), 6)},
        "limits": limits,
        "actor_restarts": restarts,
        "pool": pool,
        "cpu_s": cpu_s,
    }


def request_errors(usage: dict[str, Any]) -> int:
    """Requests that failed after every retry (a dead endpoint, a prompt over the context)."""
    return sum(u.get("errors", 0) for u in usage.values())


RECORDED_KINDS = ("unparseable", "request_error")  # counted from the committed records


def fault_counts(earlier: dict[str, Any], usage: dict[str, Any],
            gate_stats: dict[str, Any]) -> dict[str, int]:
    """Faults by kind over the whole run directory. Unparseable answers and requests that
    failed after every retry (`request_error`) come from the committed records, which cover
    every session. HTTP faults come from the gate, which hears of every request whether or
    not its answer was recorded: this session's, plus what earlier sessions counted. A run
    without an API model has no gate: its records are all there is."""
    recorded: dict[str, int] = {}
    for u in usage.values():
        for kind, n in u.get("faults", {}).items():
            recorded[kind] = recorded.get(kind, 0) + n
    recorded["request_error"] = request_errors(usage)
    if gate_stats:
        out = {k: v for k, v in earlier.get("faults", {}).items() if k not in RECORDED_KINDS}
        for kind, n in gate_stats.get("faults", {}).items():
            out[kind] = out.get(kind, 0) + n
        out.update({k: recorded.get(k, 0) for k in RECORDED_KINDS})
    else:
        out = recorded
    return {k: v for k, v in sorted(out.items()) if v}
