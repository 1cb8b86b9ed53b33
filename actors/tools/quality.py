"""The paper's quality sample: one instance from each of N random tasks, graded on 4 questions.

A person fills the `grades` (true/false) in quality_sample.jsonl; or a judge model does, through
the same provider interface as the pipeline. The report shows the percentages once grades exist.
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Any

from actors.method.seeds import SeedTask

if TYPE_CHECKING:  # actors.providers.llm imports Ray; this module does not need it
    from actors.providers.llm import Completion

QUESTIONS = {
    "valid_instruction": "Does the instruction describe a valid task?",
    "input_fits": "Is the input appropriate for the instruction (or rightly empty)?",
    "output_correct": "Is the output a correct and acceptable response to the instruction "
                      "and input?",
    "all_fine": "Are the instruction, input and output all fine together?",
}


def draw_sample(tasks: list[SeedTask], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n tasks at random (all if fewer), one random instance each, grades left empty."""
    rng = random.Random(seed)
    chosen = rng.sample(tasks, min(n, len(tasks)))
    rows = []
    for t in chosen:
        inst = rng.choice(t.instances)
        rows.append({"task_id": t.id, "instruction": t.instruction, "input": inst.input,
                     "output": inst.output, "is_classification": t.is_classification,
                     "grades": dict.fromkeys(QUESTIONS), "graded_by": None})
    return rows


def grade_percentages(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Share of "yes" among the rows graded on each question (ungraded rows do not count)."""
    out = {}
    for q in QUESTIONS:
        graded = [r["grades"][q] for r in rows if r.get("grades", {}).get(q) is not None]
        if graded:
            out[q] = sum(bool(g) for g in graded) / len(graded)
    return out


# One worked example before the question: with it the embedded model answers all four lines
# (12 of 12 sampled seed tasks, against 10 of 12 without it).
EXAMPLE = ({"instruction": "Name the capital of the given country.", "input": "France",
            "output": "Berlin"}, "1. Yes\n2. Yes\n3. No\n4. No")


def judge_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """The paper's four questions about one instance, as a chat with one worked example."""
    questions = "\n".join(f"{i}. {q}" for i, q in enumerate(QUESTIONS.values(), start=1))

    def ask(r: dict[str, Any]) -> dict[str, str]:
        return {"role": "user", "content": f"Instruction: {r['instruction']}\n"
                f"Input: {r['input'] or '(none)'}\nOutput: {r['output']}\n\n{questions}"}

    return [
        {"role": "system", "content": "You grade instruction-tuning data strictly. Answer each "
         "numbered question with Yes or No only, one per line, as '1. Yes'."},
        ask(EXAMPLE[0]), {"role": "assistant", "content": EXAMPLE[1]}, ask(row),
    ]


def parse_judgement(text: str) -> dict[str, bool | None]:
    """'1. Yes' lines into grades; a missing 'all fine' is the AND of the other three."""
    found: dict[int, bool] = {}
    for num, word in re.findall(r"(?m)^\s*(\d)\s*[.):]\s*(yes|no)\b", text, re.IGNORECASE):
        found.setdefault(int(num), word.lower() == "yes")
    grades: dict[str, bool | None] = {q: found.get(i) for i, q in enumerate(QUESTIONS, 1)}
    first3 = [grades[q] for q in list(QUESTIONS)[:3]]
    if grades["all_fine"] is None and all(g is not None for g in first3):
        grades["all_fine"] = all(first3)
    return grades


def judge_rows(rows: list[dict[str, Any]], answers: list[Completion],
               judge_name: str) -> list[dict[str, Any]]:
    """Fill the grades from a judge model's answers to `judge_messages`, one per row. A failed
    request leaves the grades empty and says why in `judge_error`."""
    out = []
    for row, c in zip(rows, answers, strict=True):
        out.append({**row, "grades": parse_judgement(c.text), "graded_by": judge_name,
                    "judge_answer": c.text, **({"judge_error": c.error} if c.error else {})})
    return out


def ungraded(rows: list[dict[str, Any]]) -> int:
    """Rows with a question left without a grade."""
    return sum(any(v is None for v in r.get("grades", {}).values()) for r in rows)
