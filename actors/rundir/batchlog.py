"""batches.jsonl: every provider batch the run submitted, written before it is polled.

A batch's id and the custom ids of its requests are fsynced here as soon as the provider
accepts it, so a run killed while batches run finds them again on `--resume`: the batcher
polls the same batches and submits none of their requests twice. One writer: the batcher
actor. A torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from actors.rundir.runlog import RunDirError, append_synced, describe_os_error

BATCH_LOG = "batches.jsonl"


def read_batches(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """batch id -> {stage, model, ids, status ('' while running), counts}, in log order."""
    path = Path(run_dir) / BATCH_LOG
    batches: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return batches
    for line in path.read_bytes().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # the torn end of a write a crash cut
        if rec.get("event") == "submitted":
            batches[rec["batch_id"]] = {"stage": rec["stage"], "model": rec["model"],
                                        "ids": rec["ids"], "status": "", "counts": {}}
        elif rec.get("event") == "ended" and rec["batch_id"] in batches:
            batches[rec["batch_id"]].update(status=rec["status"], counts=rec["counts"])
    return batches


class BatchLog:
    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / BATCH_LOG
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held for the run

    def _write(self, rec: dict[str, Any]) -> None:
        try:
            append_synced(self.fh, json.dumps({**rec, "time": round(time.time(), 3)}).encode()
                    + b"\n")
        except OSError as exc:
            raise RunDirError(describe_os_error(self.path, exc)) from None

    def submitted(self, batch_id: str, stage: str, model: str, ids: list[str]) -> None:
        self._write({"event": "submitted", "batch_id": batch_id, "stage": stage,
                     "model": model, "ids": ids})

    def ended(self, batch_id: str, status: str, counts: dict[str, int]) -> None:
        self._write({"event": "ended", "batch_id": batch_id, "status": status,
                     "counts": counts})

    def close(self) -> None:
        self.fh.close()
