"""`selfinstruct repair RUN_DIR`: rebuild a dataset.jsonl that was cut or emptied outside the
program, from what the commits vouch for.

Every dataset line follows from committed records: the accepted task, its classify answer and
its instance answer (StageLogic.instance_outcome, as a resumed run rebuilds a line it had not yet
written). Replaying the commit log batch by batch, with the rule that orders the dataset
(acceptance order; a stop writes every finished task), gives the file back line for line. The
damaged file is kept beside it; the rebuilt one replaces it whole.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections import deque
from pathlib import Path
from typing import Any

from actors.config import PipelineConfig
from actors.files import replaced_on_success
from actors.method.ids import task_of
from actors.method.stages import StageLogic
from actors.rundir.prepare import lock_run_dir
from actors.rundir.recovery import completion_of, labelled
from actors.rundir.runlog import COMMITS, DATA_FILES, RunDirError, read_committed, recover

REPLAYED = ("accepted", "rejected", "responses")  # what a dataset line is rebuilt from


def _commits(run_dir: Path) -> list[dict[str, int]]:
    """Lines per file of each committed batch, in order (read as `recover` reads the log: it
    ends at its first line that is torn or does not parse)."""
    out = []
    for line in (run_dir / COMMITS).read_bytes().split(b"\n")[:-1]:
        try:
            out.append(dict(json.loads(line).get("lines", {})))
        except (ValueError, TypeError, AttributeError):
            break
    return out


def rebuild_dataset(run_dir: Path, stages: StageLogic) -> list[dict[str, Any]]:
    """Every dataset line the commits vouch for, in the order the run wrote them."""
    batches = _commits(run_dir)
    readers = {name: read_committed(run_dir, name, sum(b.get(name, 0) for b in batches))
               for name in REPLAYED}
    tasks: dict[str, dict[str, Any]] = {}
    labels: dict[str, dict[str, Any]] = {}
    order: deque[str] = deque()
    held: dict[str, dict[str, Any]] = {}
    failed: set[str] = set()
    dataset: list[dict[str, Any]] = []
    for n, lines in enumerate(batches, start=1):
        got = {name: list(itertools.islice(readers[name], lines.get(name, 0)))
               for name in REPLAYED}
        for name, recs in got.items():
            if len(recs) < lines.get(name, 0):
                raise RunDirError(
                    f"{run_dir / DATA_FILES[name]}: holds fewer lines than {COMMITS} vouches "
                    f"for; only dataset.jsonl can be rebuilt (from this file). Restore it from "
                    f"a copy")
        for task in got["accepted"]:
            tasks[task["id"]] = task
            order.append(task["id"])
        failed.update(r["item"]["id"] for r in got["rejected"] if r["stage"] == "task")
        for rec in got["responses"]:
            if rec.get("retry_of") or rec["stage"] not in ("classify", "instances"):
                continue  # an answer asked again: the last one counts
            tid = task_of(rec["id"])
            if rec["stage"] == "classify":
                labels[tid] = rec
                continue
            if tid not in labels:
                raise RunDirError(f"{run_dir}: {rec['id']} has no committed classify answer; "
                                  f"the run directory cannot be rebuilt")
            out = stages.instance_outcome(labelled(tasks[tid], labels[tid]), completion_of(rec))
            if out.dataset:
                held[tid] = out.dataset[0]
        ready = []
        while order and (order[0] in held or order[0] in failed):
            ready += [tid] if (tid := order.popleft()) in held else []
        if len(ready) < lines.get("dataset", 0):  # a stop: every finished task, in order
            ready += [tid for tid in order if tid in held]
            order = deque(tid for tid in order if tid not in held)
        if len(ready) != lines.get("dataset", 0):
            raise RunDirError(f"{run_dir / COMMITS}: batch {n} wrote {lines.get('dataset', 0)} "
                              f"dataset lines, the records account for {len(ready)}; the "
                              f"dataset cannot be rebuilt. Restore it from a copy")
        dataset += [held.pop(tid) for tid in ready]
    return dataset


def _backup_name(path: Path) -> Path:
    names = (path.with_name(f"{path.name}.damaged{f'.{k}' if k else ''}")
             for k in itertools.count())
    return next(p for p in names if not p.exists())


def repair(run_dir: Path) -> dict[str, Any]:
    """Rebuild dataset.jsonl when it holds fewer complete lines than the commits vouch for.

    The lines still there must be what the commits rebuild (a file edited, not cut, is left
    alone); the damaged file is kept as dataset.jsonl.damaged, the new one written atomically,
    with the directory locked against a run."""
    if not (run_dir / COMMITS).is_file():
        raise RunDirError(f"{run_dir}: no {COMMITS} here, so nothing to rebuild from; `repair` "
                          f"expects a run directory")
    lock = lock_run_dir(run_dir)
    try:
        return _repair(run_dir)
    finally:
        lock.close()


def _repair(run_dir: Path) -> dict[str, Any]:
    path, run_json = run_dir / DATA_FILES["dataset"], run_dir / "run.json"
    want = recover(run_dir, truncate=False).lines.get("dataset", 0)
    have = path.read_bytes().split(b"\n")[:-1] if path.exists() else []
    if len(have) >= want:
        return {"status": "intact", "dataset_lines": want}
    try:
        cfg = PipelineConfig.model_validate(json.loads(run_json.read_text())["config"])
    except (OSError, ValueError, KeyError) as exc:
        raise RunDirError(f"{run_json}: cannot read the run's config, which rebuilding needs "
                          f"({str(exc).splitlines()[0][:120]})") from None
    rebuilt = [json.dumps(r, ensure_ascii=False) + "\n"
               for r in rebuild_dataset(run_dir, StageLogic(cfg, {}))]
    for k, line in enumerate(have):
        if line + b"\n" != rebuilt[k].encode():
            raise RunDirError(f"{path}:{k + 1}: differs from the line the commits rebuild, so "
                              f"the file was edited, not only cut; it is left as it is. "
                              f"Restore it from a copy, or start a new run directory")
    backup = _backup_name(path) if path.exists() else None
    if backup:
        shutil.copy2(path, backup)
    with replaced_on_success(path, RunDirError) as fh:
        fh.writelines(rebuilt)
    return {"status": "repaired", "dataset_lines": want, "kept": len(have),
            "rebuilt": want - len(have), "damaged_copy": str(backup) if backup else None}
