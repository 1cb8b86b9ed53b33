"""The offline greedy ROUGE-L pass over any JSONL file, with the pool actor's index."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.dedup_index import Decision, RougeIndex


class DedupInputError(ValueError):
    pass


def read_jsonl(path: str | Path, field: str) -> Iterator[tuple[int, dict[str, Any], str]]:
    """(line number, record, text of `field`); a bad line is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DedupInputError(f"{path}: file not found")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DedupInputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                raise DedupInputError(
                    f"{path}:{lineno}: no string field {field!r} (choose one with --field)")
            yield lineno, rec, rec[field]


@dataclass
class DedupStats:
    against: int = 0
    candidates: int = 0
    kept: int = 0


def greedy_pass(
    index: RougeIndex,
    candidates: Iterator[tuple[str, str]],
    batch_size: int = 256,
) -> Iterator[tuple[str, Decision]]:
    """Decide candidates in file order, in batches (decisions equal one-at-a-time)."""
    batch: list[tuple[str, str]] = []
    for item in candidates:
        batch.append(item)
        if len(batch) == batch_size:
            yield from zip((i for i, _ in batch), index.check_batch(batch), strict=True)
            batch = []
    if batch:
        yield from zip((i for i, _ in batch), index.check_batch(batch), strict=True)
