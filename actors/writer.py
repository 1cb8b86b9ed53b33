"""The writer actor: the only process that appends to the run directory's files.

Every stage sends it units of work (one LLM response and what came of it, or one pool
decision batch). It commits them with the run log's protocol, keeps the counts that run.json
reports (so counts and files always agree), and drops a unit whose response it already holds:
an actor restarted by Ray may send the same work twice, and the dataset must not get it twice.
Dataset lines are written in acceptance order, so a replayed run writes the same file.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from actors.ids import task_of
from actors.recovery import completion_of, load_state
from actors.remote import Mirror
from actors.runlog import DATA_FILES, RunDirError, RunFiles, add_counts, read_committed, recover
from actors.stages import Stages
from actors.usage import USAGE_KEYS


class Writer:
    def __init__(self, out_dir: str, target: int, stages: Stages,
                 mirror_uri: str | None = None) -> None:
        # Fresh, resumed or restarted by Ray: the committed files say where things stand.
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mirror = Mirror(mirror_uri) if mirror_uri else None
        committed = recover(self.dir)
        if self.mirror and committed.batches != len(self.mirror.segments()):
            # Restarted after a batch was committed here but never stored: the store wins.
            self.mirror.pull(self.dir)
            committed = recover(self.dir)
        self.batches = committed.batches
        state = load_state(self.dir, committed)
        self.files = RunFiles(self.dir)
        self.target = target
        self.counts: dict[str, Any] = committed.counts
        self.usage: dict[str, Any] = committed.usage
        self.keys = state.response_ids
        self.tasks = committed.lines.get("dataset", 0)
        self.rejection_seq = state.rejections
        self.written = state.dataset_ids
        self.failed_ids = set(state.failed_ids)
        self.order = deque(t["id"] for t in state.accepted
                           if t["id"] not in self.written and t["id"] not in self.failed_ids)
        self.held: dict[str, dict[str, Any]] = {}
        self.started = time.time()
        self.broken = ""
        rebuilt = [{"dataset": stages.instance_outcome(task, completion_of(rec)).dataset}
                   for task, rec in state.rebuild]
        if rebuilt:
            self.write(rebuilt)

    def write(self, units: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Commit a list of units; for each, whether it was new and, if not, what it was."""
        if self.broken:
            raise RunDirError(self.broken)
        lines: dict[str, list[dict[str, Any]]] = {name: [] for name in DATA_FILES}
        counts: dict[str, Any] = {}
        usage: dict[str, Any] = {}
        results, new_keys = [], set()
        for unit in units:
            key = unit.get("key")
            if key and (key in self.keys or key in new_keys):
                results.append(self._known(unit))
                continue
            if key:
                new_keys.add(key)
            results.append({"dup": False})
            self._take(unit, lines, counts, usage)
        self._flush_in_order(lines, counts, final=False)
        if any(lines.values()) or counts:
            try:
                self._commit(lines, {"counts": counts, "usage": usage})
            except RunDirError as exc:
                self.broken = str(exc)
                raise
        add_counts(self.counts, counts)
        add_counts(self.usage, usage)
        self.keys |= new_keys
        self.tasks += len(lines["dataset"])
        return results

    def _commit(self, lines: dict[str, list[dict[str, Any]]], meta: dict[str, Any]) -> None:
        """Here first, then (for a remote run directory) on the store, where it counts."""
        record = self.files.commit(lines, meta)
        self.batches += 1
        if self.mirror:
            self.mirror.push_segment(self.batches, lines, record)

    def _known(self, unit: dict[str, Any]) -> dict[str, Any]:
        """What the first copy of a repeated unit produced, for the actor that repeated it."""
        key = unit["key"]
        if key.startswith("prop_"):
            # Rare (a proposer restarted after committing): read the first copy back.
            cands = [c for c in read_committed(self.dir, "candidates", 1 << 62)
                     if c["response_id"] == key]
            return {"dup": True, "candidates": cands}
        tid = task_of(key)
        return {"dup": True, "ok": tid in self.written or tid in self.held}

    def _take(self, unit: dict[str, Any], lines: dict[str, list[dict[str, Any]]],
              counts: dict[str, Any], usage: dict[str, Any]) -> None:
        def stage(name: str) -> dict[str, Any]:
            return counts.setdefault(name, {"in": 0, "accepted": 0, "rejected": 0, "reasons": {}})

        for name, n in unit.get("accepted", {}).items():
            s = stage(name)
            s["accepted"] += n
            s["in"] += n
        for rec in unit.get("rejected", []):
            s = stage(rec["stage"])
            s["rejected"] += 1
            s["in"] += 1
            s["reasons"][rec["rule"]] = s["reasons"].get(rec["rule"], 0) + 1
            self.rejection_seq += 1
            lines["rejected"].append({"id": f"rej_{self.rejection_seq:07d}", **rec})
            if rec["stage"] == "task":
                self.failed_ids.add(rec["item"]["id"])
        cached = set(unit.get("cached", []))
        for rec in unit.get("responses", []):
            u = usage.setdefault(f"{rec['stage']}:{rec['model']}", {})
            add_counts(u, {"requests": 1, "cache_hits": int(rec["id"] in cached),
                           "errors": int(rec["finish_reason"] == "error"),
                           **{k: rec.get(k, 0) for k in USAGE_KEYS},
                           "faults": rec.get("faults", {})})
            lines["responses"].append(rec)
        lines["candidates"] += unit.get("candidates", [])
        for rec in unit.get("admitted", []):
            lines["accepted"].append(rec)
            self.order.append(rec["id"])
        for rec in unit.get("dataset", []):
            if rec["id"] not in self.written:
                self.held[rec["id"]] = rec

    def _flush_in_order(self, lines: dict[str, list[dict[str, Any]]], counts: dict[str, Any],
                        final: bool) -> None:
        """Move finished tasks to the dataset in acceptance order (all of them when final)."""
        ready = []
        while self.order and (self.order[0] in self.held or self.order[0] in self.failed_ids):
            ready.append(self.order.popleft())
        if final:
            ready += [tid for tid in self.order if tid in self.held]
            self.order = deque(tid for tid in self.order if tid not in self.held)
        for tid in ready:
            if tid in self.held:
                lines["dataset"].append(self.held.pop(tid))
                self.written.add(tid)
        if lines["dataset"]:
            task = counts.setdefault("task", {"in": 0, "accepted": 0, "rejected": 0,
                                              "reasons": {}})
            task["accepted"] += len(lines["dataset"])
            task["in"] += len(lines["dataset"])

    def stats(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "finished": self.tasks + len(self.held),
                "target": self.target, "stages": self.counts, "usage": self.usage,
                "elapsed_s": time.time() - self.started}

    def close(self) -> dict[str, Any]:
        """A stop: write every finished task, even those waiting on an earlier one."""
        if self.held and not self.broken:
            lines: dict[str, list[dict[str, Any]]] = {name: [] for name in DATA_FILES}
            counts: dict[str, Any] = {}
            self._flush_in_order(lines, counts, final=True)
            self._commit(lines, {"counts": counts, "usage": {}})
            add_counts(self.counts, counts)
            self.tasks += len(lines["dataset"])
        self.files.close()
        return self.stats()
