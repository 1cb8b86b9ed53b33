"""Before anything starts: every prompt template renders with the values its stage fills, and
the longest prompts the seeds can make fit the embedded model's context window.

Otherwise a template with an unknown placeholder, or a seed too long for the model, fails only
when a prompt is first built or sent, inside an actor, seconds or hours into a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from actors.config import LocalModel, PipelineConfig
from actors.method.prompts import Shot, Template, TemplateError
from actors.method.seeds import SeedTask, load_seeds
from actors.method.stages import StageLogic

# Tokens a chat template adds around each message, and for the assistant's turn (ChatML, the
# embedded model's, adds 5 and 3): chat prompts are counted from their contents plus this.
CHAT_OVERHEAD = 8

TokenCounter = Callable[[str], int]
Prompt = str | list[dict[str, str]]


def gguf_counter(model: LocalModel) -> TokenCounter:
    """Tokens by the model's own vocabulary, read from its GGUF without the weights (about half
    a second), so digits, code and non-English text are counted as the model will see them."""
    from llama_cpp import Llama

    from actors.providers.local_model import default_gguf

    with contextlib.redirect_stderr(io.StringIO()):  # llama.cpp's notes on a vocab-only load
        llm = Llama(model_path=model.path or default_gguf(), vocab_only=True, n_ctx=8,
                    verbose=False)
    return lambda text: len(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))


@dataclass(frozen=True)
class PromptFit:
    """The longest prompt one template makes from the seeds, against its model's window."""

    template: str                     # the template file
    stage: str                        # stages.<stage> in the config
    model: str                        # models.<model>
    seed: SeedTask                    # the longest seed in the prompt
    max_tokens: int
    prompt_tokens: int | None = None  # None: an API model, whose window the config omits
    seed_tokens: int = 0
    n_ctx: int = 0
    room: int = 0      # tokens left for the seed text (the seed, or all shots) in the window
    shots: int = 0     # the propose prompt: the longest seed is one of this many shots
    too_long: int = 0  # seeds longer than the room for one, the longest included

    @property
    def fits(self) -> bool:
        return self.prompt_tokens is None or self.prompt_tokens + self.max_tokens <= self.n_ctx

    def need(self) -> str:
        shots = f", as one of {self.shots} shots" if self.shots else ""
        return f"{self.prompt_tokens} + {self.max_tokens} ({Path(self.template).stem}{shots})"

    def __str__(self) -> str:
        if self.prompt_tokens is None:
            return f"{self.template}: renders; its length is not checked (an API model)"
        return (f"{self.template}: {self.prompt_tokens} + max_tokens {self.max_tokens} of "
                f"{self.n_ctx} tokens at the longest")


def _tokens(prompt: Prompt, count: TokenCounter) -> int:
    if isinstance(prompt, str):
        return count(prompt)
    return sum(count(m["content"]) + CHAT_OVERHEAD for m in prompt) + CHAT_OVERHEAD


def _problems(fits: list[PromptFit]) -> list[str]:
    """One line per template that leaves no room for any seed, then one per seed too long,
    naming its file:line, every prompt it overflows and what to change."""
    lines, by_seed = [], {}
    for fit in (f for f in fits if not f.fits):
        if fit.room <= 0:
            lines.append(f"{fit.template}: the {fit.stage} prompt without its seed text is "
                         f"{fit.n_ctx - fit.max_tokens - fit.room} tokens, which with "
                         f"stages.{fit.stage}.max_tokens {fit.max_tokens} leaves no room in "
                         f"models.{fit.model}.n_ctx {fit.n_ctx}; lower max_tokens, shorten "
                         f"the template, or raise n_ctx")
        else:
            by_seed.setdefault((fit.seed.id, fit.model), []).append(fit)
    for (_, model), over in by_seed.items():
        seed, others = over[0].seed, max(f.too_long for f in over) - 1
        more = f" ({others} other seed(s) are too long as well)" if others > 0 else ""
        lines.append(f"{seed.source}: seed {seed.id!r} ({over[0].seed_tokens} tokens) is too "
                     f"long for models.{model}.n_ctx {over[0].n_ctx}: prompt + max_tokens come "
                     f"to {', '.join(f.need() for f in over)}. Shorten or remove the seed{more}, "
                     f"lower stages.*.max_tokens, or raise n_ctx")
    return lines


def _prompts(stages: StageLogic, stage: str, shots: list[Shot]) -> dict[str, Prompt]:
    """What a stage sends, by template: the propose prompt with these shots; the others with
    the first one's instruction (both instance modes, as a task may be either kind)."""
    if stage == "propose":
        return {"propose": stages.propose_prompt(shots)}
    if stage == "classify":
        return {"classify": stages.classify_prompt(shots[0].instruction)}
    return {stages.instance_mode(c): stages.instance_prompt(
        {"instruction": shots[0].instruction, "is_classification": c}) for c in (False, True)}


def check_prompts(cfg: PipelineConfig, templates: dict[str, Template],
                  counter: Callable[[LocalModel], TokenCounter] = gguf_counter
                  ) -> list[PromptFit]:
    """Render every template the run uses as its stage does, around the longest seeds (the
    propose prompt with the num_shots longest as shots, the others with the longest
    instruction), and measure each against its model's n_ctx with max_tokens to answer.

    Raises TemplateError naming the template and the unknown placeholder, or each seed that
    does not fit by file:line and id with what to change; returns the measurements otherwise."""
    seeds = [task for path in cfg.seeds for task in load_seeds(path)]
    stages = StageLogic(cfg, templates)
    sizes: dict[str, tuple[TokenCounter | None, list[int]]] = {}
    fits: list[PromptFit] = []
    for stage in ("propose", "classify", "instances"):
        conf = getattr(cfg.stages, stage)
        model = cfg.models[conf.model]
        if conf.model not in sizes:
            count = counter(model) if isinstance(model, LocalModel) else None
            sizes[conf.model] = count, [count(t.instruction) if count else len(t.instruction)
                                        for t in seeds]
        count, size = sizes[conf.model]
        ranked = sorted(range(len(seeds)), key=lambda i: -size[i])
        used = ranked[:conf.num_shots if stage == "propose" else 1]
        longest = seeds[used[0]]
        prompts = _prompts(stages, stage, [Shot(seeds[i].id, seeds[i].instruction) for i in used])
        for name, prompt in prompts.items():
            fit = PromptFit(templates[name].path, stage, conf.model, longest, conf.max_tokens)
            if count:
                tokens = _tokens(prompt, count)
                room = model.n_ctx - conf.max_tokens - tokens + sum(size[i] for i in used)
                fit = dataclasses.replace(
                    fit, prompt_tokens=tokens, seed_tokens=size[used[0]], n_ctx=model.n_ctx,
                    room=room, shots=len(used) if stage == "propose" else 0,
                    too_long=0 if stage == "propose" else sum(s > room for s in size))
            fits.append(fit)
    if problems := _problems(fits):
        raise TemplateError("\n".join(problems))
    return fits
