"""The offline greedy ROUGE-L pass over any JSONL file, with the pool actor's index."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.files import same_file, text_lines
from actors.method.dedup_index import Decision, RougeIndex


class DedupInputError(ValueError):
    pass


def read_jsonl(path: str | Path, field: str) -> Iterator[tuple[int, dict[str, Any], str]]:
    """(line number, record, text of `field`); a bad line is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DedupInputError(f"{path}: file not found")
    for lineno, line in text_lines(path, DedupInputError):
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


def check_outputs(inputs: list[str], outputs: dict[str, str | None]) -> None:
    """Refuse an output file that is also an input, or another output, before anything is
    read: it would be replaced while it is still needed."""
    named = [(flag, Path(p)) for flag, p in outputs.items() if p]
    for k, (flag, path) in enumerate(named):
        for src in inputs:
            if same_file(path, Path(src)):
                raise DedupInputError(f"{flag} {path}: is also an input ({src}); write to "
                                      f"another file")
        for other_flag, other in named[:k]:
            if same_file(path, other):
                raise DedupInputError(f"{flag} {path}: is also {other_flag}; give each its "
                                      f"own file")


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
