"""What every stage sends a model and gets back: `Request` and `Completion`, whichever model
answers (the embedded GGUF in its own Ray actors, or a remote API). Plain data, no Ray, so the
pure modules that build and read them import no cluster."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.config import Decoding


@dataclass(frozen=True)
class Request:
    prompt: str | list[dict[str, str]]
    temperature: float
    top_p: float
    max_tokens: int
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def mode(self) -> str:
        return "completion" if isinstance(self.prompt, str) else "chat"


def make_request(prompt: str | list[dict[str, str]], dec: Decoding, seed: int | None) -> Request:
    return Request(prompt, dec.temperature, dec.top_p, dec.max_tokens, dec.presence_penalty,
                   dec.frequency_penalty, tuple(dec.stop), seed)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str = ""
    cached: bool = False            # served from the response cache, not by the model
    cache_read_tokens: int = 0      # prompt tokens the provider served from its prompt cache
    cache_write_tokens: int = 0     # prompt tokens written to it (Anthropic)
    cost_usd: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)  # HTTP attempts that failed, by kind
    batch_id: str = ""              # the provider batch that answered it (delivery: batch)
    batch_saved_usd: float = 0.0    # what the same answer would have cost more online

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass(frozen=True)
class Attempt:
    """A response that was asked again because it could not be parsed."""

    completion: Completion
    problem: str
