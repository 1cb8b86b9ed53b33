"""Prompt templates as plain files, and the pure functions that fill them.

A completion template is text. A chat template is a list of messages, each introduced by a line
`=== system ===`, `=== user ===` or `=== assistant ===`. Placeholders are written `{{name}}` and
filled with str.replace, so braces in examples (code, JSON) need no escaping.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from actors.files import read_text
from actors.method.parsing import collapse_ws

_HEADER = re.compile(r"^=== (system|user|assistant) ===[ \t]*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")

Message = dict[str, str]


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Template:
    """A completion template (text) or a chat template (messages), with its source path."""

    path: str
    mode: str
    text: str = ""
    messages: tuple[tuple[str, str], ...] = ()

    @property
    def placeholders(self) -> set[str]:
        sources = [self.text] + [content for _, content in self.messages]
        return {name for s in sources for name in _PLACEHOLDER.findall(s)}

    @property
    def fixed_prefix(self) -> str:
        """A completion template's text before its first placeholder (the same in every
        prompt, so a provider can cache it); '' for chat templates."""
        if self.mode != "completion":
            return ""
        found = _PLACEHOLDER.search(self.text)
        return self.text[:found.start()] if found else self.text

    def render(self, **values: str) -> str | list[Message]:
        missing = self.placeholders - values.keys()
        if missing:
            known = ", ".join("{{" + k + "}}" for k in sorted(values)) or "none"
            raise TemplateError(f"{self.path}: unknown placeholder {{{{{sorted(missing)[0]}}}}}"
                                f"; this stage fills {known} (fix the spelling or remove it)")

        def fill(s: str) -> str:
            for name, value in values.items():
                s = s.replace("{{" + name + "}}", value)
            return s

        if self.mode == "completion":
            return fill(self.text)
        return [{"role": role, "content": fill(content)} for role, content in self.messages]


def parse_chat(text: str, path: str) -> tuple[tuple[str, str], ...]:
    """Split a chat template into (role, content) pairs; the last one must be the user's turn."""
    parts = _HEADER.split(text)
    if parts[0].strip():
        raise TemplateError(f"{path}: text before the first '=== role ===' header")
    messages = tuple((parts[i], parts[i + 1].strip()) for i in range(1, len(parts), 2))
    if not messages or messages[-1][0] != "user":
        raise TemplateError(f"{path}: a chat template must end with a '=== user ===' message")
    return messages


def load_template(prompts_dir: str | Path, stage: str, mode: str) -> Template:
    """`prompts/{stage}.{mode}.txt`: one file per stage and mode."""
    path = Path(prompts_dir) / f"{stage}.{mode}.txt"
    try:
        text = read_text(path, TemplateError)
    except FileNotFoundError:
        raise TemplateError(f"{path}: prompt template not found") from None
    if mode == "chat":
        return Template(str(path), mode, messages=parse_chat(text, str(path)))
    return Template(str(path), mode, text=text)


def clean_shot(instruction: str) -> str:
    """The original's shot cleaning: whitespace collapsed, a trailing ':' removed."""
    instruction = collapse_ws(instruction)
    return instruction[:-1] if instruction.endswith(":") else instruction


def number_shots(instructions: list[str]) -> str:
    """'1. ...\\n2. ...\\n' then the next number with a dot, where the model continues."""
    lines = [f"{i}. {clean_shot(inst)}\n" for i, inst in enumerate(instructions, start=1)]
    return "".join(lines) + f"{len(instructions) + 1}."


@dataclass(frozen=True)
class Shot:
    id: str
    instruction: str


def sample_shots(
    rng: random.Random,
    human: list[Shot],
    machine: list[Shot],
    num_shots: int = 8,
    num_machine: int = 2,
) -> list[Shot]:
    """num_machine from the machine pool (fewer while it is smaller), the rest human, shuffled."""
    shots = rng.sample(machine, min(num_machine, len(machine)))
    shots += rng.sample(human, min(num_shots - len(shots), len(human)))
    rng.shuffle(shots)
    return shots
