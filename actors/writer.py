"""The writer actor: the only process that appends to the run directory's files.

Every stage sends it what happened (passes per stage, rejections with reasons, raw responses,
finished tasks), so the counts in run.json come from the same place as the files and always
agree with them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

FILES = {"dataset": "dataset.jsonl", "rejected": "rejected.jsonl", "responses": "responses.jsonl"}


def empty_counts() -> dict[str, Any]:
    return {"in": 0, "accepted": 0, "rejected": 0, "reasons": {}}


class Writer:
    def __init__(self, out_dir: str, target: int) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.target = target
        self.files = {k: open(self.dir / name, "a", encoding="utf-8")  # noqa: SIM115
                      for k, name in FILES.items()}
        self.stages: dict[str, dict[str, Any]] = {}
        self.tasks = 0
        self.usage: dict[str, dict[str, int]] = {}
        self.started = time.time()
        self.rejection_seq = 0

    def _stage(self, name: str) -> dict[str, Any]:
        return self.stages.setdefault(name, empty_counts())

    def write(self, batch: dict[str, Any]) -> int:
        """Append one batch, flush and fsync it, update the counts; returns tasks written."""
        for stage, n in batch.get("accepted", {}).items():
            s = self._stage(stage)
            s["accepted"] += n
            s["in"] += n
        for rec in batch.get("rejected", []):
            s = self._stage(rec["stage"])
            s["rejected"] += 1
            s["in"] += 1
            s["reasons"][rec["rule"]] = s["reasons"].get(rec["rule"], 0) + 1
            self.rejection_seq += 1
            rec = {"id": f"rej_{self.rejection_seq:07d}", **rec, "time": round(time.time(), 3)}
            self.files["rejected"].write(json.dumps(rec, ensure_ascii=False) + "\n")
        now = round(time.time(), 3)
        for rec in batch.get("responses", []):
            rec = {**rec, "written_at": now}
            u = self.usage.setdefault(f"{rec['stage']}:{rec['model']}",
                                      {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
            u["requests"] += 1
            u["prompt_tokens"] += rec.get("prompt_tokens", 0)
            u["completion_tokens"] += rec.get("completion_tokens", 0)
            self.files["responses"].write(json.dumps(rec, ensure_ascii=False) + "\n")
        for rec in batch.get("dataset", []):
            rec = {**rec, "provenance": {**rec.get("provenance", {}), "written_at": now}}
            self.tasks += 1
            self.files["dataset"].write(json.dumps(rec, ensure_ascii=False) + "\n")
        for fh in self.files.values():
            fh.flush()
            os.fsync(fh.fileno())
        return self.tasks

    def stats(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "target": self.target, "stages": self.stages,
                "usage": self.usage, "elapsed_s": time.time() - self.started}

    def close(self) -> dict[str, Any]:
        for fh in self.files.values():
            fh.close()
        return self.stats()
