"""What a resumed run may change: target, budget, concurrency and providers, not the method.

The method is every setting that decides what data comes out (decoding, filters, dedup, the
seed, shot sampling) plus the contents of the seed and prompt files. run.json keeps its
fingerprint; a resume compares and names each difference.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from actors.config import PipelineConfig

# Per stage: which model serves it, how many requests it keeps in flight, and whether they
# go online or in provider batches may change.
FREE_STAGE_KEYS = {"model", "max_in_flight_per_actor", "delivery", "batch"}


class ResumeError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(cfg: PipelineConfig, template_paths: list[str]) -> dict[str, Any]:
    stages = {name: {k: v for k, v in conf.items() if k not in FREE_STAGE_KEYS}
              for name, conf in cfg.stages.model_dump().items()}
    return {
        "seed_files": {Path(p).name: _sha256(Path(p)) for p in cfg.seeds},
        "prompt_files": {Path(p).name: _sha256(Path(p)) for p in sorted(template_paths)},
        "stages": stages,
        "filters": cfg.filters.model_dump(),
        "dedup": cfg.dedup.model_dump(),
        "run.seed": cfg.run.seed,
    }


def changes(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths where two fingerprints differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"{sub}: added")
            elif key not in new:
                out.append(f"{sub}: removed")
            else:
                out += changes(old[key], new[key], sub)
        return out
    if old != new:
        if path.startswith(("seed_files", "prompt_files")):
            return [f"{path}: file contents changed"]
        return [f"{path}: was {old!r}, now {new!r}"]
    return []


def read_run_json(out: Path) -> dict[str, Any]:
    path = out / "run.json"
    if not path.exists():
        raise ResumeError(f"{out}: no run.json, so nothing to resume; start without --resume")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResumeError(
            f"{path}: corrupted ({exc}); the data files are intact. Restore run.json from a "
            f"backup, or start a new run with the dataset as seeds") from None
    if not isinstance(data, dict) or "method" not in data:
        raise ResumeError(f"{path}: has no 'method' fingerprint; it was not written by this "
                          f"version's `selfinstruct run`")
    return data


def check_resume(out: Path, current: dict[str, Any]) -> dict[str, Any]:
    """The earlier run.json, if the method is unchanged; else an error naming each change."""
    earlier = read_run_json(out)
    diff = changes(earlier["method"], current)
    if diff:
        raise ResumeError(
            f"{out}: cannot resume with a different method; changed since the run began:\n  "
            + "\n  ".join(diff)
            + "\nUndo these changes, or start a new run directory (target, budget, "
              "concurrency and models may change)")
    return earlier
