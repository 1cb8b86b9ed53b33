"""Filters as named rules: each gives a verdict and a reason, set in YAML, counted in run.json.

Instruction rules see one instruction; instance rules see one generated instance; task rules see
all instances of a task at once (conflicting outputs drop the task, duplicates are removed, a
cap keeps at most N). Rules are pure, so they are unit-tested without Ray or a model.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    ok: bool
    rule: str = ""
    reason: str = ""


PASS = Verdict(True)


@dataclass(frozen=True)
class Instance:
    input: str
    output: str
    truncated: bool = False


InstructionRule = Callable[[str], Verdict]
InstanceRule = Callable[[Instance], Verdict]


def _word_count(name: str, min_words: int = 4, max_words: int = 150) -> InstructionRule:
    def rule(text: str) -> Verdict:
        n = len(text.split())
        if n < min_words:
            return Verdict(False, name, f"{n} words, fewer than {min_words}")
        if n > max_words:
            return Verdict(False, name, f"{n} words, more than {max_words}")
        return PASS

    return rule


def _keywords(name: str, words: list[str]) -> InstructionRule:
    pattern = re.compile(
        r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE
    ) if words else None

    def rule(text: str) -> Verdict:
        match = pattern.search(text) if pattern else None
        if match:
            return Verdict(False, name, f"contains {match.group(0).lower()!r}")
        return PASS

    return rule


def _starts_with(name: str, prefixes: list[str], ignore_case: bool = True) -> InstructionRule:
    """The original tests "Write a program" after `.capitalize()`, which makes the test blind to
    case; `ignore_case` keeps that without changing the instruction's own case."""
    def rule(text: str) -> Verdict:
        head = text.lower() if ignore_case else text
        for prefix in prefixes:
            if head.startswith(prefix.lower() if ignore_case else prefix):
                return Verdict(False, name, f"starts with {prefix!r}")
        return PASS

    return rule


def _first_char_punctuation(name: str) -> InstructionRule:
    def rule(text: str) -> Verdict:
        if not text or text[0] in string.punctuation:
            return Verdict(False, name, f"starts with punctuation {text[:1]!r}")
        return PASS

    return rule


def _first_char_ascii(name: str) -> InstructionRule:
    def rule(text: str) -> Verdict:
        if not text or not text[0].isascii():
            return Verdict(False, name, f"starts with non-ASCII {text[:1]!r}")
        return PASS

    return rule


def _truncated(name: str) -> InstanceRule:
    def rule(inst: Instance) -> Verdict:
        return Verdict(False, name, "cut off by the length limit") if inst.truncated else PASS

    return rule


def _input_equals_output(name: str) -> InstanceRule:
    def rule(inst: Instance) -> Verdict:
        if inst.input.strip() == inst.output.strip():
            return Verdict(False, name, "input equals output")
        return PASS

    return rule


def _empty_output(name: str) -> InstanceRule:
    def rule(inst: Instance) -> Verdict:
        return Verdict(False, name, "empty output") if not inst.output.strip() else PASS

    return rule


def _ends_with(name: str, suffixes: list[str]) -> InstanceRule:
    def rule(inst: Instance) -> Verdict:
        for field_name, value in (("input", inst.input), ("output", inst.output)):
            for suffix in suffixes:
                if value.strip().endswith(suffix):
                    return Verdict(False, name, f"{field_name} ends with {suffix!r}")
        return PASS

    return rule


INSTRUCTION_RULES: dict[str, Callable[..., InstructionRule]] = {
    "word_count": _word_count,
    "keywords": _keywords,
    "starts_with": _starts_with,
    "first_char_punctuation": _first_char_punctuation,
    "first_char_ascii": _first_char_ascii,
}

INSTANCE_RULES: dict[str, Callable[..., InstanceRule]] = {
    "truncated": _truncated,
    "input_equals_output": _input_equals_output,
    "empty_output": _empty_output,
    "ends_with": _ends_with,
}


def build_chain(
    registry: Mapping[str, Callable[..., Callable[[Any], Verdict]]],
    config: Mapping[str, Mapping[str, Any] | None],
) -> list[Callable[[Any], Verdict]]:
    """Turn `{rule_name: params}` (None or enabled: false disables it) into an ordered chain."""
    chain = []
    for name, params in config.items():
        params = dict(params or {})
        if params.pop("enabled", True) is False:
            continue
        chain.append(registry[name](name, **params))
    return chain


def apply_chain(chain: list[Callable[[Any], Verdict]], item: Any) -> Verdict:
    """First failing rule wins, so each rejection has exactly one reason to count."""
    for rule in chain:
        verdict = rule(item)
        if not verdict.ok:
            return verdict
    return PASS


@dataclass(frozen=True)
class TaskFilterResult:
    kept: list[Instance]
    dropped: list[tuple[Instance, Verdict]]
    task_verdict: Verdict


def filter_task_instances(
    instances: list[Instance],
    chain: list[InstanceRule],
    drop_conflicting: bool = True,
    deduplicate: bool = True,
    max_instances: int | None = 5,
) -> TaskFilterResult:
    """prepare_for_finetuning.py's instance rules for one task, in its order."""
    kept: list[Instance] = []
    dropped: list[tuple[Instance, Verdict]] = []
    for inst in instances:
        verdict = apply_chain(chain, inst)
        if verdict.ok:
            kept.append(inst)
        else:
            dropped.append((inst, verdict))
    if drop_conflicting:
        outputs: dict[str, str] = {}
        for inst in kept:
            key = inst.input.strip()
            if key and outputs.setdefault(key, inst.output.strip()) != inst.output.strip():
                return TaskFilterResult(
                    [], dropped + [(i, Verdict(False, "conflicting_outputs", "")) for i in kept],
                    Verdict(False, "conflicting_outputs",
                            f"input {key[:60]!r} has two different outputs"),
                )
    if deduplicate:
        seen: set[tuple[str, str]] = set()
        unique = []
        for inst in kept:
            key = (inst.input.strip(), inst.output.strip())
            if key in seen:
                dropped.append((inst, Verdict(False, "duplicate_instance", "exact duplicate")))
            else:
                seen.add(key)
                unique.append(inst)
        kept = unique
    if max_instances is not None and len(kept) > max_instances:
        dropped += [(i, Verdict(False, "max_instances", f"over {max_instances}"))
                    for i in kept[max_instances:]]
        kept = kept[:max_instances]
    if not kept:
        reasons = sorted({v.rule for _, v in dropped}) or ["no_instances"]
        return TaskFilterResult([], dropped, Verdict(
            False, "no_valid_instances", "no instance survived: " + ", ".join(reasons)))
    return TaskFilterResult(kept, dropped, PASS)
