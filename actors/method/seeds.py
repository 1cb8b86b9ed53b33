"""Seed tasks in the seed-task schema: the project's, the paper's file, or a run's dataset.

A malformed line is an error naming the file and the line, so a bad seed file fails before a
run starts instead of silently shrinking the human pool.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.files import text_lines


class SeedError(ValueError):
    pass


@dataclass(frozen=True)
class SeedInstance:
    input: str
    output: str


@dataclass(frozen=True)
class SeedTask:
    id: str
    name: str
    instruction: str
    instances: tuple[SeedInstance, ...]
    is_classification: bool
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    source: str = field(default="", compare=False)  # 'file:line', for messages about it

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "instruction": self.instruction,
            "instances": [{"input": i.input, "output": i.output} for i in self.instances],
            "is_classification": self.is_classification,
            **self.extra,
        }


def slug(text: str, words: int = 5) -> str:
    """A short snake_case name from an instruction, for the schema's `name` field."""
    tokens = re.findall(r"[a-z0-9]+", text.lower())[:words]
    return "_".join(tokens) or "task"


def _require(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise SeedError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise SeedError(
            f"{where}: {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def parse_seed(obj: Any, where: str) -> SeedTask:
    """One record of the schema; `name` may be absent (then derived from the instruction)."""
    if not isinstance(obj, dict):
        raise SeedError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    task_id = _require(obj, "id", str, where)
    instruction = _require(obj, "instruction", str, where).strip()
    if not instruction:
        raise SeedError(f"{where}: 'instruction' is empty")
    raw_instances = _require(obj, "instances", list, where)
    if not raw_instances:
        raise SeedError(f"{where}: 'instances' is empty; a seed task needs at least one")
    instances = []
    for k, inst in enumerate(raw_instances):
        at = f"{where}: instances[{k}]"
        if not isinstance(inst, dict):
            raise SeedError(f"{at} must be an object with 'input' and 'output'")
        instances.append(SeedInstance(_require(inst, "input", str, at),
                                      _require(inst, "output", str, at)))
    is_cls = _require(obj, "is_classification", bool, where)
    name = obj.get("name") or slug(instruction)
    if not isinstance(name, str):
        raise SeedError(f"{where}: 'name' must be str")
    known = {"id", "name", "instruction", "instances", "is_classification"}
    extra = {k: v for k, v in obj.items() if k not in known}
    return SeedTask(task_id, name, instruction, tuple(instances), is_cls, extra, where)


def load_seeds(path: str | Path, defaults: dict[str, Any] | None = None) -> list[SeedTask]:
    """Read a seed-schema JSONL file; every problem names `file:line`. `defaults` fill keys a
    record leaves out (the paper's evaluation tasks carry no `is_classification`)."""
    path = Path(path)
    if not path.is_file():
        raise SeedError(f"{path}: seed file not found")
    tasks: list[SeedTask] = []
    seen: dict[str, int] = {}
    for lineno, line in text_lines(path, SeedError):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SeedError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})"
                            ) from None
        if defaults and isinstance(obj, dict):
            obj = {**defaults, **obj}
        task = parse_seed(obj, where)
        if task.id in seen:
            raise SeedError(f"{where}: duplicate id {task.id!r} (first on line "
                            f"{seen[task.id]})")
        seen[task.id] = lineno
        tasks.append(task)
    if not tasks:
        raise SeedError(f"{path}: no seed tasks in the file")
    return tasks
