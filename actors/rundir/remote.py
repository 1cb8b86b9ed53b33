"""Run directories on object storage (s3://, gs://, any fsspec URL), with the local rules.

Object stores cannot append, so the durable copy of a run is a sequence of immutable segment
objects, `segments/0000000001.json`, one per committed batch, each holding that batch's lines
and its commit record. A PUT is atomic, so a batch is on the store entirely or not at all. The
writer works in a local staging copy on its node (so the pool and recovery read plain files)
and commits each batch there first, then uploads its segment: a batch counts once its segment
is stored. Every start (fresh, --resume, a restarted writer) rebuilds the staging copy from the
segments, so what the store holds is the truth. At the end the usual files (dataset.jsonl,
run.json, ...) are written next to the segments for people and tools to read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from actors.rundir.runlog import COMMITS, DATA_FILES, RunDirError, RunFiles

SEGMENTS = "segments"


def is_remote(out: str) -> bool:
    return "://" in out and not out.startswith("file://")


def staging_dir(uri: str) -> Path:
    """Where this node keeps the working copy of a remote run directory."""
    base = Path(os.environ.get("SELFINSTRUCT_STAGING", Path.home() / ".cache" / "selfinstruct"))
    return base / "staging" / hashlib.sha256(uri.encode()).hexdigest()[:16]


class Mirror:
    def __init__(self, uri: str) -> None:
        import fsspec

        self.uri = uri.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        except (ImportError, ValueError) as exc:
            raise RunDirError(f"{uri}: cannot open this storage URL ({exc}); for s3:// install "
                              f"s3fs, for gs:// gcsfs (`pip install -e .[cloud]`)") from None

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def segments(self) -> list[str]:
        try:
            names = self.fs.ls(self._path(SEGMENTS), detail=False)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(".json"))

    def has_run(self) -> bool:
        return bool(self.segments()) or self.fs.exists(self._path("run.json"))

    def check_writable(self) -> None:
        probe = self._path(".write-test")
        try:
            self.fs.pipe(probe, b"ok")
            self.fs.rm(probe)
        except Exception as exc:  # noqa: BLE001 - every backend raises its own errors
            raise RunDirError(f"{self.uri}: cannot write there ({exc})") from None

    def pull(self, local: Path) -> int:
        """Rebuild the staging copy's data files from the stored segments (its response cache
        and event log stay); returns how many segments there were."""
        local.mkdir(parents=True, exist_ok=True)
        for fname in (*DATA_FILES.values(), COMMITS):
            (local / fname).unlink(missing_ok=True)
        files = RunFiles(local)
        names = self.segments()
        for k, name in enumerate(names, start=1):
            seg = json.loads(self.fs.cat(name))
            if seg["seq"] != k:
                raise RunDirError(f"{self.uri}: segment {k} is missing ({name} found in its "
                                  f"place); the stored run is damaged")
            meta = {key: v for key, v in seg["commit"].items() if key not in ("time", "lines")}
            files.commit(seg["lines"], meta, when=seg["commit"]["time"])
        files.close()
        return len(names)

    def push_segment(self, seq: int, lines: dict[str, list[dict[str, Any]]],
                     commit: dict[str, Any]) -> None:
        body = json.dumps({"seq": seq, "commit": commit,
                           "lines": {k: v for k, v in lines.items() if v}}).encode()
        try:
            self.fs.pipe(self._path(SEGMENTS, f"{seq:010d}.json"), body)
        except Exception as exc:  # noqa: BLE001
            raise RunDirError(f"{self.uri}: cannot store batch {seq} ({exc}). Every stored batch "
                              f"is safe; fix this and run again with --resume") from None

    def put_file(self, local: Path, name: str | None = None) -> None:
        if local.exists():
            self.fs.put_file(str(local), self._path(name or local.name))

    def publish(self, local: Path) -> None:
        """The readable files, next to the segments (rewritten at every stop)."""
        for fname in (*DATA_FILES.values(), COMMITS, "events.jsonl", "run.json"):
            self.put_file(local / fname)

    def read_text(self, name: str) -> str | None:
        try:
            return self.fs.cat(self._path(name)).decode()
        except FileNotFoundError:
            return None
