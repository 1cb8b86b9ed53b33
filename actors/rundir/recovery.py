"""Where a run stands, read back from its committed files: what is done and what is pending.

The same reading serves `--resume` after a crash, a restarted pool or writer, and the pending
counts in run.json after a stop. A task is finished once its instance response is committed
(its dataset line, if any, can be rebuilt from that response without calling the model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.method.ids import classify_id, instances_id, prompt_number
from actors.method.stages import StageLogic
from actors.providers.llm import Completion
from actors.rundir.runlog import Committed, read_committed


def completion_of(rec: dict[str, Any]) -> Completion:
    """A recorded response as the model's answer again (for rebuilding, not re-asking)."""
    return Completion(text=rec["text"], finish_reason=rec["finish_reason"], model=rec["model"],
                      prompt_tokens=rec.get("prompt_tokens", 0),
                      completion_tokens=rec.get("completion_tokens", 0),
                      latency_s=rec.get("latency_s", 0.0), error=rec.get("error", ""))


def labelled(task: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
    is_cls, answer = StageLogic.classify_answer(completion_of(rec))
    return {**task, "is_classification": is_cls,
            "classify": {"model": rec["model"], "response_id": rec["id"], "answer": answer}}


@dataclass
class RunState:
    committed: Committed
    response_ids: set[str] = field(default_factory=set)
    prompts: set[int] = field(default_factory=set)            # prompts answered and committed
    pending_candidates: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    accepted: list[dict[str, Any]] = field(default_factory=list)  # in acceptance order
    decided: int = 0                                         # dedup decisions so far
    candidates: int = 0
    dataset_ids: set[str] = field(default_factory=set)
    succeeded: int = 0
    failed_ids: set[str] = field(default_factory=set)
    rebuild: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    unclassified: list[dict[str, Any]] = field(default_factory=list)
    classified: list[dict[str, Any]] = field(default_factory=list)
    open_tasks: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # stage, task
    rejections: int = 0

    def pending(self) -> dict[str, int]:
        return {"candidates": sum(len(c) for c in self.pending_candidates.values()),
                "unclassified": len(self.unclassified), "classified": len(self.classified)}


def load_state(run_dir: Path, committed: Committed) -> RunState:
    """Read the committed records once and sort every piece of work into done or pending."""
    st = RunState(committed)
    n = committed.lines
    responses: dict[str, dict[str, Any]] = {}
    for rec in read_committed(run_dir, "responses", n.get("responses", 0)):
        st.response_ids.add(rec["id"])
        if rec.get("retry_of"):  # an unparseable answer asked again: the last one counts
            continue
        if rec["stage"] == "propose":
            st.prompts.add(prompt_number(rec["id"]))
        elif rec["stage"] in ("classify", "instances"):
            responses[rec["id"]] = rec
    decided: set[str] = set()
    for rec in read_committed(run_dir, "rejected", n.get("rejected", 0)):
        st.rejections += 1
        item = rec.get("item", {})
        if rec["stage"] == "dedup":
            decided.add(item["cid"])
        elif rec["stage"] == "task":
            st.failed_ids.add(item["id"])
    st.accepted = list(read_committed(run_dir, "accepted", n.get("accepted", 0)))
    decided.update(t["cid"] for t in st.accepted)
    st.decided = len(decided)
    for cand in read_committed(run_dir, "candidates", n.get("candidates", 0)):
        st.candidates += 1
        if cand["cid"] not in decided:
            st.pending_candidates.setdefault(cand["prompt"], []).append(cand)
    for rec in read_committed(run_dir, "dataset", n.get("dataset", 0)):
        st.dataset_ids.add(rec["id"])
    for task in st.accepted:
        tid = task["id"]
        if tid in st.failed_ids:
            continue
        if tid in st.dataset_ids:
            st.succeeded += 1
            continue
        cls = responses.get(classify_id(tid))
        inst = responses.get(instances_id(tid))
        if cls is None:
            st.unclassified.append(task)
            st.open_tasks.append(("classify", task))
        elif inst is None:
            st.classified.append(labelled(task, cls))
            st.open_tasks.append(("instances", st.classified[-1]))
        else:  # answered and committed, its dataset line not yet written: rebuild it
            st.rebuild.append((labelled(task, cls), inst))
            st.succeeded += 1
    return st
