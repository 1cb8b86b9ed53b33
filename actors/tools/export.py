"""Fine-tuning files from any seed-schema dataset: filtered, split by task, in five formats."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from actors.config import Filters
from actors.method.filters import INSTANCE_RULES, Instance, build_chain, filter_task_instances
from actors.method.seeds import SeedTask

FORMATS = ("alpaca", "openai-chat", "sharegpt", "prompt-completion", "hf")


class ExportError(ValueError):
    pass


@dataclass(frozen=True)
class Example:
    task_id: str
    instruction: str
    input: str
    output: str


def examples_from(tasks: list[SeedTask], filters: Filters | None = None) -> list[Example]:
    """The instance filters of prepare_for_finetuning.py, then one example per instance."""
    filters = filters or Filters()
    chain = build_chain(INSTANCE_RULES, filters.instance.model_dump())
    out = []
    for t in tasks:
        result = filter_task_instances(
            [Instance(i.input, i.output) for i in t.instances], chain,
            filters.task.drop_conflicting, filters.task.deduplicate, filters.task.max_instances)
        out += [Example(t.id, t.instruction, i.input, i.output) for i in result.kept]
    return out


def split(examples: list[Example], val_fraction: float, seed: int
          ) -> tuple[list[Example], list[Example]]:
    """A seeded split by task, so no task's instances sit on both sides."""
    tasks = sorted({e.task_id for e in examples})
    random.Random(seed).shuffle(tasks)
    n_val = round(len(tasks) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(tasks) > 1:
        n_val = 1
    val = set(tasks[:n_val])
    return ([e for e in examples if e.task_id not in val],
            [e for e in examples if e.task_id in val])


def load_templates(path: str | Path) -> dict[str, list[dict[str, str]]]:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    for family in ("with_input", "no_input"):
        items = (data or {}).get(family)
        if not items or not all({"prompt", "completion"} <= set(t) for t in items):
            raise ExportError(f"{path}: '{family}' must list templates with prompt/completion")
    return data


def fill(template: str, e: Example) -> str:
    return (template.replace("{{instruction}}", e.instruction)
            .replace("{{input}}", e.input).replace("{{output}}", e.output))


def user_text(e: Example) -> str:
    return f"{e.instruction}\n\n{e.input}" if e.input.strip() else e.instruction


def render(e: Example, fmt: str, rng: random.Random,
           templates: dict[str, list[dict[str, str]]] | None) -> dict[str, Any]:
    if fmt in ("alpaca", "hf"):
        return {"instruction": e.instruction, "input": e.input, "output": e.output,
                "task_id": e.task_id}
    if fmt == "openai-chat":
        return {"messages": [{"role": "user", "content": user_text(e)},
                             {"role": "assistant", "content": e.output}]}
    if fmt == "sharegpt":
        return {"id": e.task_id, "conversations": [{"from": "human", "value": user_text(e)},
                                                   {"from": "gpt", "value": e.output}]}
    if fmt == "prompt-completion":
        assert templates is not None
        family = "with_input" if e.input.strip() else "no_input"
        k = rng.randrange(len(templates[family]))
        t = templates[family][k]
        return {"prompt": fill(t["prompt"], e), "completion": fill(t["completion"], e),
                "template": f"{family}/{k}", "task_id": e.task_id}
    raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def export(tasks: list[SeedTask], fmt: str, out: str | Path, val_fraction: float = 0.05,
           seed: int = 0, templates_path: str | Path | None = None) -> dict[str, Any]:
    """Write train and validation files (a `datasets` folder for hf); returns the counts."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    templates = load_templates(templates_path) if fmt == "prompt-completion" else None
    train, val = split(examples_from(tasks), val_fraction, seed)
    rng = random.Random(seed)
    parts = {"train": [render(e, fmt, rng, templates) for e in train],
             "validation": [render(e, fmt, rng, templates) for e in val]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        from datasets import Dataset, DatasetDict

        columns = ["instruction", "input", "output", "task_id"]
        DatasetDict({name: Dataset.from_dict({c: [r[c] for r in rows] for c in columns})
                     for name, rows in parts.items()}).save_to_disk(str(out))
    elif fmt == "alpaca":
        for name, rows in parts.items():
            (out / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    else:
        for name, rows in parts.items():
            with (out / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return {"format": fmt, "out": str(out), "train": len(train), "validation": len(val),
            "tasks": len({e.task_id for e in train + val})}
