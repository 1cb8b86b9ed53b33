"""Ask the config's models from outside the pipeline (evaluation, the quality judge).

The requests take the same road as a run's: the client `client_for` builds, the embedded model's
replicas, the gate actor with its cluster-wide limits and budget, the response cache, keys from
the environment. Only the caller differs: the CLI's own process drives the asyncio loop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

import ray

from actors.config import ApiModel, ConfigError, LocalModel, PipelineConfig
from actors.engine.gate import Gate
from actors.engine.pipeline import init_ray
from actors.engine.run_inputs import api_keys
from actors.providers.api import Secret
from actors.providers.client import LLMClient, client_for
from actors.providers.llm import Completion, Request
from actors.providers.local_model import start_local_replicas

# client_for builds a stage's client; this stage's settings are replaced by the caller's.
STAGE = "classify"


def model_names(cfg: PipelineConfig, names: Iterable[str], source: str, flag: str) -> list[str]:
    """The names, each checked against the config's `models:` (in order, once each)."""
    out = list(dict.fromkeys(names))
    for name in out:
        if name not in cfg.models:
            raise ConfigError(f"{source}: {flag} {name!r} is not under 'models' (defined: "
                              f"{', '.join(sorted(cfg.models))})")
    return out


def for_model(cfg: PipelineConfig, name: str, max_in_flight: int = 16,
              parse_retries: int = 0) -> PipelineConfig:
    """The config with every stage served by `name`: what api_keys and client_for read."""
    stages = {s: getattr(cfg.stages, s).model_copy(update={
        "model": name, "max_in_flight_per_actor": max_in_flight, "parse_retries": parse_retries})
        for s in ("propose", "classify", "instances")}
    return cfg.model_copy(update={"stages": cfg.stages.model_copy(update=stages)})


class Asker:
    """Ray, the gate for the API models among `names`, and the embedded model's replicas
    (started when a client first needs them, stopped by `release`)."""

    def __init__(self, cfg: PipelineConfig, names: list[str], cache_path: str | None,
                 max_cost: float | None = None, spent: float = 0.0) -> None:
        self.cfg = cfg
        self.cache_path = cache_path
        self.keys: dict[str, Secret | None] = {}
        for name in names:  # a missing key fails here, before Ray starts
            self.keys.update(api_keys(for_model(cfg, name)))
        init_ray(cfg)
        api = {n: cfg.models[n] for n in names if isinstance(cfg.models[n], ApiModel)}
        self.gate = ray.remote(num_cpus=0, max_restarts=3)(Gate).remote(
            api, max_cost, spent) if api else None
        self.replicas: dict[str, list[Any]] = {}

    def client(self, name: str, holder: str, max_in_flight: int = 16,
               parse_retries: int = 0) -> LLMClient:
        """A client for model `name`, as a run's stage gets one; `holder` names the caller at
        the gate."""
        model = self.cfg.models[name]
        if isinstance(model, LocalModel) and name not in self.replicas \
                and not self.cfg.cache.replay_only:
            self.replicas[name] = start_local_replicas(model, name)
        client = client_for(for_model(self.cfg, name, max_in_flight, parse_retries), STAGE,
                            self.replicas, self.gate, self.keys, self.cache_path)
        client.bind(f"{holder}:{name}", uuid.uuid4().hex)
        return client

    async def provider_down(self) -> str:
        """Why the run should stop: an API model whose last requests all failed, or ''."""
        if self.gate is None:
            return ""
        dead = (await self.gate.stats.remote())["dead"]
        return "; ".join(f"models.{m}: provider unreachable or refusing: {why}"
                         for m, why in dead.items())

    def release(self, name: str) -> None:
        """Stop a local model's replicas (the next model may need their cores)."""
        for handle in self.replicas.pop(name, []):
            ray.kill(handle)

    def close(self) -> None:
        for name in list(self.replicas):
            self.release(name)
        if self.gate is not None:
            ray.kill(self.gate)


def ask_all(cfg: PipelineConfig, name: str, requests: list[Request], cache_path: str | None,
            holder: str, max_in_flight: int = 16) -> list[Completion]:
    """Every request to model `name`, concurrently (at most max_in_flight at a time)."""
    asker = Asker(cfg, [name], cache_path)
    try:
        async def go() -> list[Completion]:
            client = asker.client(name, holder, max_in_flight)
            return list(await asyncio.gather(*(client.complete(r) for r in requests)))

        return asyncio.run(go())
    finally:
        asker.close()
