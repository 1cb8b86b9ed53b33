"""Preparing a run directory before anything starts: writable, not holding another run unless
resuming, locked for this run, its object-storage copy pulled; and run.json, written whole."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from actors.engine.run_inputs import RunError
from actors.rundir.remote import Mirror
from actors.rundir.runlog import COMMITS, DATA_FILES, describe_os_error


def check_out_dir(out: Path, resume: bool) -> None:
    """Fail before starting anything if the run directory cannot be written, or holds a run
    and --resume was not given."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"{out}: cannot write the run directory ({exc.strerror})") from None
    if not resume and any((out / f).exists() and (out / f).stat().st_size
                          for f in (COMMITS, *DATA_FILES.values())):
        raise RunError(f"{out}: already holds a run; add --resume to go on with it, or choose "
                       f"a new --out directory")


def prepare_remote(mirror: Mirror, local: Path, resume: bool) -> None:
    """A run directory on object storage: check it, then build this node's working copy."""
    mirror.check_writable()
    if not resume and mirror.has_run():
        raise RunError(f"{mirror.uri}: already holds a run; add --resume to go on with it, or "
                       f"choose a new --out")
    if not resume:
        (local / "events.jsonl").unlink(missing_ok=True)
    mirror.pull(local)
    (local / "run.json").unlink(missing_ok=True)
    if (text := mirror.read_text("run.json")) is not None:
        (local / "run.json").write_text(text)


def lock_run_dir(out: Path) -> Any:
    """One run per directory: a second `run` (or `--resume`) on it while this one lives fails
    at once instead of interleaving its writes with ours. The lock dies with the process."""
    fh = (out / ".lock").open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise RunError(f"{out}: another run is using this directory; wait for it to stop, or "
                       f"stop it (Ctrl-C or `ray job stop`)") from None
    return fh


def write_run_json(out: Path, summary: dict[str, Any]) -> None:
    """Atomically: a crash leaves the old run.json or the new one, never half of one."""
    tmp = out / "run.json.tmp"
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(summary, indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(out / "run.json")
    except OSError as exc:
        raise RunError(describe_os_error(out / "run.json", exc)) from None
