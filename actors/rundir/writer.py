"""The append side of the run directory: batches committed in order, here and on the store.

A plain class, owned by the pool actor (its one caller), so the run's records reach the files
in exactly the order the ledger decided them. It holds no run state: it only knows how to make
a batch durable (runlog.py's protocol), and, for a run directory on object storage, to push each
batch as one immutable segment.
"""

from __future__ import annotations

from pathlib import Path

from actors.engine.ledger import Batch
from actors.rundir.remote import Mirror
from actors.rundir.runlog import Committed, RunDirError, RunFiles, recover


class Writer:
    def __init__(self, out_dir: str, mirror_uri: str | None = None) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mirror = Mirror(mirror_uri) if mirror_uri else None
        committed = recover(self.dir)
        if self.mirror and committed.batches != len(self.mirror.segments()):
            # Restarted after a batch was committed here but never stored: the store wins.
            self.mirror.pull(self.dir)
            committed = recover(self.dir)
        self.committed: Committed = committed
        self.batches = committed.batches
        self.files = RunFiles(self.dir)
        self.broken = ""

    def commit(self, batch: Batch) -> None:
        """All of the batch or none of it; after a failure, every later commit refuses too,
        so nothing can land after a hole."""
        if self.broken:
            raise RunDirError(self.broken)
        if not batch:
            return
        try:
            record = self.files.commit(batch.lines, batch.meta())
        except RunDirError as exc:
            self.broken = str(exc)
            raise
        self.batches += 1
        if self.mirror:
            self.mirror.push_segment(self.batches, batch.lines, record)

    def close(self) -> None:
        self.files.close()
