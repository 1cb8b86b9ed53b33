"""Turning raw model text into instructions, labels and instances.

Parsers never raise on odd text: a response they cannot use gives an empty result plus a
reason, and the caller records the rejection, so malformed output is counted, not lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from actors.filters import Instance

_SPLIT_NUMBERED = re.compile(r"\n\d+\s?\. ")
_WS = re.compile(r"\s+")


def collapse_ws(text: str) -> str:
    return _WS.sub(" ", text).strip()


@dataclass(frozen=True)
class ParsedInstructions:
    instructions: list[str]
    dropped_reason: str = ""


def parse_instructions(text: str, truncated: bool, capitalize: bool = False) -> ParsedInstructions:
    """bootstrap_instructions.py's post-processing of one response.

    A response cut off by the length limit is dropped whole (its last item may be half-written).
    A newline is put in front so that a chat model which restates the numbering ("9. ...",
    or "1. ...") is split the same way as a completion that continues after "9.".
    """
    if truncated:
        return ParsedInstructions([], "truncated")
    out = []
    for raw in _SPLIT_NUMBERED.split("\n" + text.lstrip("\n")):
        inst = collapse_ws(raw)
        if capitalize:
            inst = inst.capitalize()
        if inst:
            out.append(inst)
    if not out:
        return ParsedInstructions([], "empty")
    return ParsedInstructions(out)


def parse_classification(text: str) -> bool | None:
    """'Yes' means yes, as in the original; None when the answer is neither."""
    answer = text.strip().lower()
    if answer.startswith("yes"):
        return True
    if answer.startswith("no"):
        return False
    return None


_EXAMPLE_SPLIT = re.compile(r"(?:^|\n)\s*Example\s*\d+\s*[.:]?[ \t]*(?=\n|$)", re.IGNORECASE)
_OUTPUT_MARK = re.compile(r"(?:^|\n)\s*Output\s*\d*\s*:", re.IGNORECASE)
_INPUT_MARK = re.compile(r"(?:^|\n)\s*Input\s*\d*\s*:", re.IGNORECASE)
_LABEL_MARK = re.compile(r"(?:^|\n)\s*Class label\s*\d*\s*:", re.IGNORECASE)


def _strip_after_task(text: str) -> str:
    # The model may run on into a new "Task:"; everything after belongs to no example.
    return re.split(r"\n\s*Task\s*:", "\n" + text, maxsplit=1)[0]


def parse_input_first(text: str, truncated: bool) -> list[Instance]:
    """'Example N / Input: / Output:' blocks, or a bare 'Output:' for tasks with no input.

    When the response is cut off, only its last instance is marked truncated: the earlier ones
    were complete, which is what the instance filter needs to know.
    """
    body = _strip_after_task(text)
    chunks = [c for c in _EXAMPLE_SPLIT.split(body) if c.strip()]
    instances = []
    for chunk in chunks:
        parts = _OUTPUT_MARK.split(chunk, maxsplit=1)
        if len(parts) == 2:
            inst_input, inst_output = parts
        else:
            inst_input, inst_output = "", chunk
        # A second input inside the output means the model ran on; keep the first pair.
        inst_output = _INPUT_MARK.split(inst_output, maxsplit=1)[0]
        inst_input = _INPUT_MARK.sub("", inst_input, count=1)
        instances.append(Instance(inst_input.strip(), inst_output.strip()))
    return _mark_last_truncated(instances, truncated)


def parse_output_first(text: str, truncated: bool) -> list[Instance]:
    """'Class label: X / Input: Y' blocks; the label is the output (labels come first)."""
    body = _strip_after_task(text)
    instances = []
    for chunk in _LABEL_MARK.split(body)[1:]:
        label, _, rest = chunk.strip().partition("\n")
        # An "Output:" after the input is the model running on; it is not part of the input.
        rest = _OUTPUT_MARK.split(rest, maxsplit=1)[0]
        inst_input = _INPUT_MARK.sub("", rest, count=1).strip()
        instances.append(Instance(inst_input, label.strip()))
    return _mark_last_truncated(instances, truncated)


def _mark_last_truncated(instances: list[Instance], truncated: bool) -> list[Instance]:
    if truncated and instances:
        last = instances[-1]
        instances[-1] = Instance(last.input, last.output, truncated=True)
    return instances
