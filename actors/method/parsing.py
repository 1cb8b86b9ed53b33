"""Turning raw model text into instructions, labels and instances.

Parsers never raise on odd text: a response they cannot use gives an empty result plus a
reason, and the caller records the rejection, so malformed output is counted, not lost.

The markers are the original code's (prepare_for_finetuning.py): case-sensitive `Example`,
`Input:`, `Output:` and `Class label:`, found anywhere on a line, so one-line answers split as
they do there. Where we part from it, the option or the README's "Where we depart from the
original code" says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from actors.method.filters import Instance

_SPLIT_NUMBERED = re.compile(r"\n\d+\s?\. ")
_WS = re.compile(r"\s+")


def collapse_ws(text: str) -> str:
    return _WS.sub(" ", text).strip()


@dataclass(frozen=True)
class ParsedInstructions:
    instructions: list[str]
    dropped_reason: str = ""


def parse_instructions(
    text: str, truncated: bool, capitalize: bool = False, strip_leading_number: bool = True,
) -> ParsedInstructions:
    """bootstrap_instructions.py's post-processing of one response.

    A response cut off by the length limit is dropped whole (its last item may be half-written).
    With `strip_leading_number`, a newline is put in front so that a chat model which restates
    the numbering ("9. ...") is split the same way as a completion that continues after "9.";
    without it the first item keeps its "9. ", as in the original.
    """
    if truncated:
        return ParsedInstructions([], "truncated")
    body = "\n" + text.lstrip() if strip_leading_number else text
    out = []
    for raw in _SPLIT_NUMBERED.split(body):
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


def _marker(word: str) -> str:
    # A marker starts a word (so '"Output:' inside code is text) and may carry a number.
    return rf"(?<!\S){word}\s*\d*\s*:"


_INPUT_MARK = re.compile(_marker("Input"))
_OUTPUT_MARK = re.compile(_marker("Output"))
_LABEL_MARK = re.compile(_marker("Class label"))
_LABEL_END = re.compile(rf"\n|{_marker('Input')}|{_marker('Output')}")
# "Example", "Example 2", "Example 2.", "Example:" ... is a header when its line ends there or
# an Input/Output marker follows, so "Example sentences are ..." in an output stays text.
_EXAMPLE = re.compile(
    r"(?<!\S)Example(?:[ \t]*\d+)?[ \t]*[.:]?"
    rf"(?=[ \t]*(?:\n|$)|\s*(?:{_marker('Input')}|{_marker('Output')}))")


def _strip_after_task(text: str) -> str:
    # The model may run on into a new "Task:"; everything after belongs to no example.
    return re.split(r"\n\s*Task\s*:", "\n" + text, maxsplit=1)[0]


def _has_marker(text: str) -> bool:
    return bool(_INPUT_MARK.search(text) or _OUTPUT_MARK.search(text))


def _input_output(piece: str) -> Instance:
    """One example: the input is what follows `Input:` up to `Output:`, the output what follows
    up to a second `Output:` or an `Input:` (the model running on into another example)."""
    parts = _OUTPUT_MARK.split(piece, maxsplit=2)
    inst_input, inst_output = (parts[0], parts[1]) if len(parts) > 1 else ("", piece)
    inst_output = _INPUT_MARK.split(inst_output, maxsplit=1)[0]
    # Text before the `Input:` label is a preamble ("Sure! Here is one."), not input.
    inst_input = _INPUT_MARK.split(inst_input, maxsplit=1)[-1]
    return Instance(inst_input.strip(), inst_output.strip())


def parse_input_first(text: str, truncated: bool, keep_unmarked: bool = True) -> list[Instance]:
    """'Example N / Input: / Output:' blocks, or a bare 'Output:' for tasks with no input.

    Text before the first example header with no marker in it is a preamble and dropped.
    Without headers the response is one example; with no marker at all it is kept as a no-input
    output when `keep_unmarked` (the original drops the task). When the response is cut off,
    only its last instance is marked truncated: the earlier ones were complete, which is what
    the instance filter needs to know.
    """
    body = _strip_after_task(text)
    pieces = _EXAMPLE.split(body)
    if len(pieces) > 1:
        if not _has_marker(pieces[0]):
            pieces = pieces[1:]
    elif not _OUTPUT_MARK.search(body) and (_INPUT_MARK.search(body) or not keep_unmarked):
        return []
    instances = [_input_output(p) for p in pieces if p.strip()]
    return _mark_last_truncated(instances, truncated)


def parse_output_first(
    text: str, truncated: bool, strip_input_label: bool = True,
) -> list[Instance]:
    """'Class label: X / Input: Y' blocks; the label is the output (labels come first).

    With `strip_input_label` the label ends at its line or at an `Input:`/`Output:` on it, the
    input is what follows `Input:`, and an `Output:` after it (the model running on) is cut;
    without it the input is the rest of the block as written, the original's rule.
    """
    body = _strip_after_task(text)
    instances = []
    for piece in _LABEL_MARK.split(body)[1:]:
        piece = piece.strip()
        if strip_input_label:
            end = _LABEL_END.search(piece)
            cut = end.start() if end else len(piece)
            label, rest = piece[:cut], _OUTPUT_MARK.split(piece[cut:], maxsplit=1)[0]
            inst_input = _INPUT_MARK.split(rest, maxsplit=1)[-1]
        else:
            label, _, inst_input = piece.partition("\n")
        instances.append(Instance(inst_input.strip(), label.strip()))
    return _mark_last_truncated(instances, truncated)


def _mark_last_truncated(instances: list[Instance], truncated: bool) -> list[Instance]:
    if truncated and instances:
        last = instances[-1]
        instances[-1] = Instance(last.input, last.output, truncated=True)
    return instances
