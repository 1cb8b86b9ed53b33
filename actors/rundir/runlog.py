"""The run directory's commit protocol: what is in a file counts only once a commit vouches for it.

Each batch appends its lines to the data files, fsyncs them, then appends one line to
commits.jsonl saying how many lines it added to each file (plus its count deltas) and fsyncs
that. A crash can leave a torn line or a half-written batch at the end of any file; `recover`
cuts every file back to what the commits vouch for, so a partial batch is never read as data.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_FILES = {"responses": "responses.jsonl", "candidates": "candidates.jsonl",
              "accepted": "accepted.jsonl", "dataset": "dataset.jsonl",
              "rejected": "rejected.jsonl"}
COMMITS = "commits.jsonl"


class RunDirError(RuntimeError):
    pass


def describe_os_error(path: Path, exc: OSError) -> str:
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EFBIG: "the file size limit was reached",
            errno.EACCES: "permission denied", errno.EROFS: "the file system is read-only"}
    why = what.get(exc.errno or 0, exc.strerror or str(exc))
    return (f"{path}: cannot write ({why}). Every committed batch is safe; fix this and run "
            f"again with --resume")


def add_counts(into: dict[str, Any], delta: dict[str, Any]) -> None:
    """Sum nested count dicts ({stage: {accepted, rejected, in, reasons: {rule: n}}})."""
    for key, value in delta.items():
        if isinstance(value, dict):
            add_counts(into.setdefault(key, {}), value)
        else:
            into[key] = into.get(key, 0) + value


@dataclass
class Committed:
    """What the commits say: lines per file, and the counts and usage summed over batches."""

    lines: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DATA_FILES, 0))
    counts: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    batches: int = 0

    def apply(self, commit: dict[str, Any]) -> None:
        for name, n in commit.get("lines", {}).items():
            self.lines[name] = self.lines.get(name, 0) + n
        add_counts(self.counts, commit.get("counts", {}))
        add_counts(self.usage, commit.get("usage", {}))
        self.batches += 1


def _whole_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(end offset, line) for every newline-terminated line; a torn tail is not yielded."""
    if not path.exists():
        return
    offset = 0
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            yield offset, line


def recover(run_dir: Path, truncate: bool = True,
            files: dict[str, str] = DATA_FILES) -> Committed:
    """Cut every file back to its committed prefix; returns what the commits add up to.

    With truncate=False it only reads (a reader beside a live writer). `files` names the data
    files (an evaluation directory keeps others under the same protocol)."""
    committed, keep = Committed(), 0
    commits = run_dir / COMMITS
    for end, line in _whole_lines(commits):
        try:
            committed.apply(json.loads(line))
        except (json.JSONDecodeError, AttributeError):
            break  # a line that does not parse ends the log: nothing after it was committed
        keep = end
    if not truncate:
        return committed
    if commits.exists():
        _truncate(commits, keep)
    for name, fname in files.items():
        path, want = run_dir / fname, committed.lines.get(name, 0)
        end, n = 0, 0
        if n < want:
            for end, _ in _whole_lines(path):  # noqa: B007
                n += 1
                if n == want:
                    break
        if n < want:
            fix = f"run `selfinstruct repair {run_dir}` to rebuild it from the commits, " \
                if name == "dataset" else ""
            raise RunDirError(
                f"{path}: holds {n} complete lines but {COMMITS} vouches for {want}; the file "
                f"was changed or cut outside this program. Restore it, {fix}or start a new "
                f"run directory")
        if path.exists():
            _truncate(path, end)
    return committed


def _truncate(path: Path, size: int) -> None:
    if path.stat().st_size != size:
        with path.open("r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())


def read_committed(run_dir: Path, name: str, n: int,
                   files: dict[str, str] = DATA_FILES) -> Iterator[dict[str, Any]]:
    """The first n records of a data file (the committed ones; call after `recover`)."""
    if n <= 0:
        return
    for k, (_, line) in enumerate(_whole_lines(run_dir / files[name])):
        yield json.loads(line)
        if k + 1 == n:
            return


def append_synced(fh: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = fh.write(view)
        if not n:
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]
    os.fsync(fh.fileno())


class RunFiles:
    """The append side: one batch at a time, all of it or none of it."""

    def __init__(self, run_dir: Path, files: dict[str, str] = DATA_FILES) -> None:
        self.dir = run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.names = files
        # Unbuffered, so a failed write leaves nothing behind in a buffer to appear later.
        self.files = {name: open(run_dir / fname, "ab", buffering=0)  # noqa: SIM115
                      for name, fname in {**files, "commits": COMMITS}.items()}

    def commit(self, lines: dict[str, list[dict[str, Any]]], meta: dict[str, Any],
               when: float | None = None) -> dict[str, Any]:
        """Append and fsync the lines, then the commit that vouches for them; returns it.

        On a write error every file is cut back to where it was, so the files stay exactly
        what the commits say, and the error names the file and what to do.
        """
        starts = {name: fh.tell() for name, fh in self.files.items()}
        current = "commits"
        try:
            for name, recs in lines.items():
                if not recs:
                    continue
                current = name
                append_synced(self.files[name], b"".join(
                    json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in recs))
            current = "commits"
            record = {"time": round(time.time(), 3) if when is None else when,
                      "lines": {k: len(v) for k, v in lines.items() if v}, **meta}
            append_synced(self.files["commits"], json.dumps(record).encode() + b"\n")
            return record
        except OSError as exc:
            for name, fh in self.files.items():
                try:
                    fh.truncate(starts[name])
                    fh.seek(starts[name])
                except OSError:
                    pass  # recover() cuts it at the next start
            fname = COMMITS if current == "commits" else self.names[current]
            raise RunDirError(describe_os_error(self.dir / fname, exc)) from None

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()
