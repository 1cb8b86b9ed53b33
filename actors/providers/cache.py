"""The opt-in response cache: one SQLite file, keyed by model, parameters and prompt.

With it, rerunning a config replays the run without calling a model: every prompt of a run is
a function of the seed and earlier answers (sequencer.py), so the same prompts come again and
find their answers here. WAL mode lets the actors of one node share the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path

from actors.providers.llm import Completion, Request


def cache_key(model: str, req: Request) -> str:
    payload = {"model": model, **dataclasses.asdict(req)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS responses "
                        "(key TEXT PRIMARY KEY, completion TEXT NOT NULL)")

    def get(self, key: str) -> Completion | None:
        row = self.db.execute("SELECT completion FROM responses WHERE key = ?",
                              (key,)).fetchone()
        if row is None:
            return None
        return dataclasses.replace(Completion(**json.loads(row[0])), cached=True)

    def put(self, key: str, c: Completion) -> Completion:
        """Keep an answer worth replaying (not errors, not cancelled generations). Returns the
        answer the cache holds for the key: when the same request was asked twice in a run,
        the first answer stored, so the run records what its replay will return."""
        if c.finish_reason in ("error", "cancelled") or c.cached:
            return c
        cur = self.db.execute("INSERT OR IGNORE INTO responses VALUES (?, ?)",
                              (key, json.dumps(dataclasses.asdict(c))))
        if cur.rowcount:
            return c
        row = self.db.execute("SELECT completion FROM responses WHERE key = ?",
                              (key,)).fetchone()
        return Completion(**json.loads(row[0])) if row else c

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
