"""The pure middle of each stage: prompt in, parsed and filtered records out.

The stage workers call these and hand what comes out to the pool; everything that decides what
a record becomes lives here and is unit-tested without Ray or a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.config import PipelineConfig
from actors.method.filters import (
    INSTANCE_RULES,
    INSTRUCTION_RULES,
    Instance,
    apply_chain,
    build_chain,
    filter_task_instances,
)
from actors.method.ids import classify_id, instances_id, prompt_id
from actors.method.parsing import (
    parse_classification,
    parse_input_first,
    parse_instructions,
    parse_output_first,
)
from actors.method.prompts import Shot, Template, number_shots
from actors.method.seeds import slug
from actors.providers.llm import Attempt, Completion


@dataclass
class Outcome:
    """What one step hands to the writer: counts of passes, rejections, responses, tasks."""

    accepted: dict[str, int] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    dataset: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    admitted: list[dict[str, Any]] = field(default_factory=list)
    key: str | None = None          # the unit's response id: the writer keeps one copy
    cached: list[str] = field(default_factory=list)

    def accept(self, stage: str, n: int = 1) -> None:
        self.accepted[stage] = self.accepted.get(stage, 0) + n

    def reject(self, stage: str, rule: str, reason: str, item: dict[str, Any]) -> None:
        self.rejected.append({"stage": stage, "rule": rule, "reason": reason, "item": item})

    def merge(self, other: Outcome) -> None:
        for stage, n in other.accepted.items():
            self.accept(stage, n)
        self.rejected += other.rejected
        self.responses += other.responses
        self.dataset += other.dataset
        self.candidates += other.candidates
        self.admitted += other.admitted
        self.cached += other.cached

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "accepted": self.accepted, "rejected": self.rejected,
                "responses": self.responses, "dataset": self.dataset,
                "candidates": self.candidates, "admitted": self.admitted,
                "cached": self.cached}


UNDONE = ("error", "cancelled", "uncached")  # answers that carry no model text


def response_record(response_id: str, stage: str, c: Completion) -> dict[str, Any]:
    extra = {"cache_read_tokens": c.cache_read_tokens, "cache_write_tokens": c.cache_write_tokens,
             "cost_usd": c.cost_usd, "faults": c.faults, "error": c.error,
             "batch_id": c.batch_id, "batch_saved_usd": c.batch_saved_usd}
    return {"id": response_id, "stage": stage, "model": c.model, "text": c.text,
            "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "latency_s": round(c.latency_s, 4),
            **{k: v for k, v in extra.items() if v}}


def response_records(response_id: str, stage: str, c: Completion,
                     retried: Sequence[Attempt] = ()) -> list[dict[str, Any]]:
    """The answer used, after the answers asked again because they could not be parsed (kept:
    they were paid for, and they count as `unparseable` faults)."""
    out = []
    for n, a in enumerate(retried, start=1):
        rec = response_record(f"{response_id}~{n}", stage, a.completion)
        faults = {**rec.get("faults", {})}
        faults["unparseable"] = faults.get("unparseable", 0) + 1
        out.append({**rec, "faults": faults, "retry_of": response_id, "parse_error": a.problem})
    return [*out, response_record(response_id, stage, c)]


def cached_ids(response_id: str, c: Completion, retried: Sequence[Attempt] = ()) -> list[str]:
    """The ids of the records (answers asked again included) the response cache served."""
    return [f"{response_id}~{n}" for n, a in enumerate(retried, start=1)
            if a.completion.cached] + ([response_id] if c.cached else [])


def looks_like_text(text: str) -> bool:
    """Mostly letters: what any language model's answer is, and symbol soup is not."""
    visible = [ch for ch in text if not ch.isspace()]
    return bool(visible) and sum(ch.isalpha() for ch in visible) >= 0.5 * len(visible)


class StageLogic:
    """The configured stage logic: templates and filter chains built once from the config."""

    def __init__(self, cfg: PipelineConfig, templates: dict[str, Template]) -> None:
        self.cfg = cfg
        self.templates = templates
        self.instruction_chain = build_chain(
            INSTRUCTION_RULES, cfg.filters.instruction.model_dump())
        self.instance_chain = build_chain(INSTANCE_RULES, cfg.filters.instance.model_dump())

    # -- propose ---------------------------------------------------------------------------
    def propose_prompt(self, shots: list[Shot]) -> str | list[dict[str, str]]:
        return self.templates["propose"].render(shots=number_shots([s.instruction for s in shots]))

    def propose_problem(self, c: Completion) -> str:
        """Why a proposal response is unusable and worth asking again ('' if it is usable).
        A response cut off by the length limit is not: the method drops it whole."""
        if c.finish_reason in UNDONE or c.truncated:
            return ""
        if parse_instructions(c.text, False).dropped_reason:
            return "no instruction in the response"
        return "" if looks_like_text(c.text) else "the response is not text"

    def propose_outcome(self, k: int, shots: list[Shot], c: Completion,
                        retried: Sequence[Attempt] = ()) -> Outcome:
        """Parse prompt k's response and run the instruction filters; candidates go to dedup."""
        response_id = prompt_id(k)
        out = Outcome(responses=response_records(response_id, "propose", c, retried),
                      key=response_id, cached=cached_ids(response_id, c, retried))
        base = {"response_id": response_id, "prompt": k, "shots": [s.id for s in shots],
                "model": c.model}
        if c.finish_reason in UNDONE:
            out.reject("propose", c.finish_reason, c.error or "request did not complete", base)
            return out
        conf = self.cfg.stages.propose
        parsed = parse_instructions(c.text, c.truncated, conf.capitalize,
                                    conf.strip_leading_number)
        if parsed.dropped_reason:
            reason = {"truncated": "response cut off by the length limit, dropped whole",
                      "empty": "no instruction in the response"}[parsed.dropped_reason]
            out.reject("propose", parsed.dropped_reason, reason, base)
            return out
        out.accept("propose")
        for k, inst in enumerate(parsed.instructions):
            item = {**base, "cid": f"{response_id}.{k}", "instruction": inst}
            verdict = apply_chain(self.instruction_chain, inst)
            if verdict.ok:
                out.candidates.append(item)
            else:
                out.reject("filter", verdict.rule, verdict.reason, item)
        out.accept("filter", len(out.candidates))
        return out

    # -- classify --------------------------------------------------------------------------
    def classify_prompt(self, instruction: str) -> str | list[dict[str, str]]:
        return self.templates["classify"].render(instruction=instruction)

    @staticmethod
    def classify_answer(c: Completion) -> tuple[bool, str]:
        """'Yes' means yes; the original treats any other answer as no, and so do we."""
        verdict = parse_classification(c.text)
        return bool(verdict), "yes" if verdict else ("no" if verdict is False else "unclear")

    @staticmethod
    def classify_problem(c: Completion) -> str:
        if c.finish_reason in UNDONE or parse_classification(c.text) is not None:
            return ""
        return f"neither Yes nor No: {c.text[:40]!r}"

    def classify_outcome(self, task: dict[str, Any], c: Completion,
                         retried: Sequence[Attempt] = ()) -> tuple[dict[str, Any], Outcome]:
        """The task with its label, and the unit that records the answer. An answer still
        neither Yes nor No after the retries counts as No, the original's rule."""
        rid = classify_id(task["id"])
        out = Outcome(responses=response_records(rid, "classify", c, retried), key=rid,
                      cached=cached_ids(rid, c, retried))
        out.accept("classify")
        is_cls, answer = self.classify_answer(c)
        return {**task, "is_classification": is_cls,
                "classify": {"model": c.model, "response_id": rid, "answer": answer}}, out

    # -- instances -------------------------------------------------------------------------
    def instance_mode(self, is_classification: bool) -> str:
        use_output_first = is_classification and not self.cfg.stages.instances.input_first_for_all
        return "instances_output_first" if use_output_first else "instances_input_first"

    def instance_prompt(self, task: dict[str, Any]) -> str | list[dict[str, str]]:
        mode = self.instance_mode(task["is_classification"])
        return self.templates[mode].render(instruction=task["instruction"])

    def _parse_instances(self, task: dict[str, Any], c: Completion) -> list[Instance]:
        conf = self.cfg.stages.instances
        if self.instance_mode(task["is_classification"]) == "instances_output_first":
            return parse_output_first(c.text, c.truncated, conf.strip_input_label)
        return parse_input_first(c.text, c.truncated, conf.keep_unmarked)

    def instance_problem(self, task: dict[str, Any], c: Completion) -> str:
        if c.finish_reason in UNDONE or c.truncated:
            return ""
        if not self._parse_instances(task, c):
            return "no instance in the response"
        return "" if looks_like_text(c.text) else "the response is not text"

    def instance_outcome(self, task: dict[str, Any], c: Completion,
                         retried: Sequence[Attempt] = ()) -> Outcome:
        """Parse, filter and, if anything survives, build the final seed-schema record."""
        response_id = instances_id(task["id"])
        out = Outcome(responses=response_records(response_id, "instances", c, retried),
                      key=response_id, cached=cached_ids(response_id, c, retried))
        mode = self.instance_mode(task["is_classification"])
        brief = {"id": task["id"], "instruction": task["instruction"],
                 "response_id": response_id}
        if c.finish_reason in UNDONE:
            out.reject("task", c.finish_reason, c.error or "request did not complete", brief)
            return out
        parsed = self._parse_instances(task, c)
        tf = self.cfg.filters.task
        result = filter_task_instances(parsed, self.instance_chain, tf.drop_conflicting,
                                       tf.deduplicate, tf.max_instances)
        for inst, verdict in result.dropped:
            out.reject("instances", verdict.rule, verdict.reason,
                       {**brief, "input": inst.input, "output": inst.output})
        out.accept("instances", len(result.kept))
        if not result.task_verdict.ok:
            out.reject("task", result.task_verdict.rule, result.task_verdict.reason, brief)
            return out
        out.dataset.append(task_record(task, result.kept, mode, response_id, c.model,
                                       [(v.rule, v.reason) for _, v in result.dropped]))
        return out


def task_record(
    task: dict[str, Any], kept: list[Instance], mode: str, response_id: str, model: str,
    dropped: list[tuple[str, str]],
) -> dict[str, Any]:
    """A dataset line: the seed-task schema, so a run can seed the next, plus provenance."""
    return {
        "id": task["id"],
        "name": slug(task["instruction"]),
        "instruction": task["instruction"],
        "instances": [{"input": i.input, "output": i.output} for i in kept],
        "is_classification": task["is_classification"],
        "provenance": {
            "shots": task["shots"],
            "propose": {"model": task["model"], "response_id": task["response_id"]},
            "classify": task["classify"],
            "instances": {"model": model, "response_id": response_id,
                          "mode": mode.removeprefix("instances_"),
                          "dropped": [{"rule": r, "reason": why} for r, why in dropped]},
            "rouge": task["rouge"],
        },
    }
