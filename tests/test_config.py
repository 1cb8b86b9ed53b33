import pytest

from actors.config import ConfigError, PipelineConfig, check_flag, load_config, parse_config
from tests.conftest import ROOT


def test_defaults_are_the_papers_values():
    p = PipelineConfig()
    assert (p.stages.propose.temperature, p.stages.propose.top_p) == (0.7, 0.5)
    assert p.stages.propose.max_tokens == 1024 and p.stages.propose.presence_penalty == 2.0
    assert p.stages.propose.stop == ["\n\n", "\n16", "16.", "16 ."]
    assert p.stages.propose.prompts_per_call == 5
    assert (p.stages.propose.num_shots, p.stages.propose.num_machine_shots) == (8, 2)
    assert p.stages.propose.capitalize is False
    assert (p.stages.classify.temperature, p.stages.classify.max_tokens) == (0.0, 3)
    assert (p.stages.instances.temperature, p.stages.instances.presence_penalty) == (0.0, 1.5)
    assert p.dedup.threshold == 0.7 and p.dedup.keep_at_threshold is False
    assert p.filters.instruction.word_count.min_words == 4
    assert p.filters.instruction.word_count.max_words == 150
    assert p.filters.task.max_instances == 5


def test_shipped_pipeline_yaml_is_valid_and_matches_defaults():
    cfg = load_config(ROOT / "pipeline.yaml")
    # The one deliberate change: the embedded chat model classifies far better in chat form.
    assert cfg.stages.classify.mode == "chat"
    cfg.stages.classify.mode = "completion"
    # Requests in flight are sized for the two embedded replicas (they do not change the data).
    assert (cfg.stages.propose.max_in_flight_per_actor,
            cfg.stages.classify.max_in_flight_per_actor,
            cfg.stages.instances.max_in_flight_per_actor) == (5, 8, 8)
    for stage in ("propose", "classify", "instances"):
        getattr(cfg.stages, stage).max_in_flight_per_actor = 16
    assert cfg.stages == PipelineConfig().stages
    assert cfg.filters == PipelineConfig().filters
    assert cfg.dedup == PipelineConfig().dedup


def _write(tmp_path, text):
    (tmp_path / "prompts").mkdir(exist_ok=True)
    (tmp_path / "s.jsonl").write_text("{}")
    path = tmp_path / "p.yaml"
    path.write_text("seeds: [s.jsonl]\n" + text)
    return path


@pytest.mark.parametrize("text,message", [
    ("stages:\n  propose:\n    temprature: 0.5\n", "stages.propose.temprature: unknown key"),
    ("dedup:\n  threshold: high\n", "dedup.threshold: Input should be a valid number"),
    ("stages:\n  classify:\n    model: gpt\n", "stages.classify.model: 'gpt' is not defined"),
    ("stages:\n  propose:\n    temperature: 3\n", "temperature must be between"),
    ("filters:\n  instruction:\n    word_count: {min: 3}\n",
     "filters.instruction.word_count.min: unknown key"),
    ("run:\n  target: 0\n", "run.target"),
    ("models:\n  local:\n    path: nowhere.gguf\n", "models.local.path: GGUF file not found"),
])
def test_errors_name_the_key_path(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_invalid_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "run:\n  target: [1,\n")
    with pytest.raises(ConfigError, match=r"p\.yaml:\d+:\d+: invalid YAML"):
        load_config(path)


def test_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="seeds.0: file not found"):
        parse_config({"seeds": ["nope.jsonl"]}, "x.yaml", tmp_path)


def test_actor_resources_become_ray_options():
    from actors.config import PipelineConfig

    cfg = PipelineConfig.model_validate({"actors": {"instancer": {"num_gpus": 0.5,
                                                            "resources": {"gpu_node": 1}}}})
    assert cfg.actors.instancer.options() == {"num_cpus": 0, "num_gpus": 0.5,
                                              "resources": {"gpu_node": 1}}
    assert cfg.actors.proposer.options() == {"num_cpus": 0, "num_gpus": 0}


@pytest.mark.parametrize("text,shown", [
    # A check of the whole config names its key and shows no part of the config; one of a
    # section, the key it names.
    ("stages:\n  classify:\n    model: gpt\n", "p.yaml: stages.classify.model: 'gpt' is not "
     "defined under 'models' (defined: local)"),
    ("stages:\n  propose:\n    temperature: 3\n", "(got temperature: 3)"),
    ("dedup:\n  threshold: [1, 2, 3]\n", "(got a list of 3 items)"),
    ("run:\n  target: " + "x" * 300 + "\n", "(got '" + "x" * 76 + "...)"),
])
def test_an_error_shows_only_the_offending_value_shortened(tmp_path, text, shown):
    path = _write(tmp_path, text + "prompts_dir: prompts\nactors: {proposers: 3}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (line,) = str(info.value).splitlines()
    assert line.endswith(shown) and len(line) < len(str(path)) + 200


def test_a_flag_is_checked_by_the_rule_of_its_config_key():
    assert check_flag("run.max_cost", "2.5") == 2.5
    for text in ("0", "-5"):
        with pytest.raises(ConfigError, match=f"'{text}': Input should be greater than 0, as "
                           f"for run.max_cost in the config"):
            check_flag("run.max_cost", text)


def test_a_config_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"run:\n  out: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"p\.yaml:2: not UTF-8 text \(byte 0xe9 at byte 11"):
        load_config(path)


@pytest.mark.parametrize("data, message", [
    ({"queues": {"batch_size": 4}}, "queues: this section is gone; batch_size is now "
                                    "actors.tasks_per_lease"),
    ({"stages": {"classify": {"max_in_flight": 4}}},
     "stages.classify.max_in_flight: this key is now stages.classify.max_in_flight_per_actor"),
])
def test_a_renamed_key_names_its_new_name(tmp_path, data, message):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "p.yaml", ROOT)
    assert str(err.value) == f"p.yaml: {message}"


@pytest.mark.parametrize("model,why", [
    ("{}", "models.local is the embedded model"),
    ("{provider: openai_compatible, model: m, base_url: 'http://x/v1'}", "has no batch API"),
])
def test_batch_delivery_needs_a_provider_with_a_batch_api(tmp_path, model, why):
    path = _write(tmp_path, f"prompts_dir: prompts\nmodels:\n  local: {model}\n"
                  "stages:\n  instances: {delivery: batch}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "stages.instances.delivery: batch needs" in str(info.value)
    assert why in str(info.value)
