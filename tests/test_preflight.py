"""Before anything starts: templates render with the values their stage fills, and the
longest prompts the seeds make fit the embedded model's context (its own tokenizer counts)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from actors.cli import main
from actors.config import PipelineConfig, load_config
from actors.engine.run_inputs import load_templates
from actors.method.prompts import TemplateError
from actors.tools.preflight import check_prompts
from tests.conftest import ROOT
from tests.runs import config

HUGE = "Summarize the following text in one sentence: " + " ".join(["word"] * 20000)


def _seeds(path, *instructions):
    """The project's seeds, then one task per instruction (ids big0, big1, ...)."""
    extra = [json.dumps({"id": f"big{k}", "instruction": text,
                         "instances": [{"input": "", "output": "x"}],
                         "is_classification": False}) + "\n"
             for k, text in enumerate(instructions)]
    path.write_text((ROOT / "seeds" / "seed_tasks.jsonl").read_text() + "".join(extra))
    return path


def _refused_before_anything_starts(cfg, tmp_path, capsys):
    """validate and run both exit 2 with one message, and run creates no run directory."""
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == err and not (tmp_path / "run").exists()
    return err


def test_an_unknown_placeholder_is_named_by_validate_and_run(tmp_path, capsys):
    prompts = tmp_path / "prompts"
    shutil.copytree(ROOT / "prompts", prompts)
    tpl = prompts / "instances_output_first.completion.txt"
    tpl.write_text(tpl.read_text().replace("{{instruction}}", "{{instruction}} {{task_name}}"))
    err = _refused_before_anything_starts(config(tmp_path, prompts_dir=str(prompts)),
                                          tmp_path, capsys)
    assert err == (f"error: {tpl}: unknown placeholder {{{{task_name}}}}; this stage fills "
                   f"{{{{instruction}}}} (fix the spelling or remove it)\n")


def test_a_seed_too_long_for_the_context_is_named_by_file_line_and_id(tmp_path, capsys):
    seeds = _seeds(tmp_path / "seeds.jsonl", HUGE)
    err = _refused_before_anything_starts(config(tmp_path, seeds=[str(seeds)]), tmp_path,
                                          capsys)
    assert re.match(rf"error: {seeds}:176: seed 'big0' \(2\d{{4}} tokens\) is too long for "
                    rf"models.local.n_ctx 2048: prompt \+ max_tokens come to ", err)
    assert "(propose.completion, as one of 8 shots)" in err and "(classify.chat)" in err
    assert err.count("\n") == 1 and "raise n_ctx" in err


def test_the_shipped_config_fits_and_says_by_how_much():
    cfg = load_config(ROOT / "pipeline.yaml")
    fits = check_prompts(cfg, load_templates(cfg))
    assert [f.stage for f in fits] == ["propose", "classify", "instances", "instances"]
    for fit in fits:
        assert 300 < fit.prompt_tokens <= fit.n_ctx - fit.max_tokens == 2048 - fit.max_tokens
    assert str(fits[0]).endswith(f"propose.completion.txt: {fits[0].prompt_tokens} + "
                                 f"max_tokens 1024 of 2048 tokens at the longest")


def _words(_model):
    return lambda text: len(text.split())


def test_every_seed_too_long_is_counted_and_only_the_longest_named(tmp_path):
    seeds = _seeds(tmp_path / "seeds.jsonl", "Explain " + "this " * 300, "Say " + "it " * 400)
    cfg = PipelineConfig.model_validate({"seeds": [str(seeds)],
                                         "prompts_dir": str(ROOT / "prompts"),
                                         "models": {"local": {"n_ctx": 1100}}})
    with pytest.raises(TemplateError) as info:
        check_prompts(cfg, load_templates(cfg), counter=_words)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{seeds}:177: seed 'big1' (401 tokens) is too long")
    assert "Shorten or remove the seed (1 other seed(s) are too long as well)" in line


def test_an_api_model_is_rendered_but_not_measured(tmp_path):
    seeds = _seeds(tmp_path / "seeds.jsonl", HUGE)
    stages = {s: {"model": "api"} for s in ("propose", "classify", "instances")}
    cfg = PipelineConfig.model_validate({
        "seeds": [str(seeds)], "prompts_dir": str(ROOT / "prompts"), "stages": stages,
        "models": {"api": {"provider": "openai_compatible", "model": "m",
                           "base_url": "http://localhost:1/v1"}}})

    def no_tokenizer(_model):
        raise AssertionError("an API model has no tokenizer here")

    fits = check_prompts(cfg, load_templates(cfg), counter=no_tokenizer)
    assert all(f.prompt_tokens is None and f.fits for f in fits)
    assert str(fits[0]).endswith("renders; its length is not checked (an API model)")


def test_a_template_with_no_room_for_any_seed_is_blamed_not_the_seed(tmp_path):
    cfg = PipelineConfig.model_validate({"seeds": [str(ROOT / "seeds" / "seed_tasks.jsonl")],
                                   "prompts_dir": str(ROOT / "prompts"),
                                   "models": {"local": {"n_ctx": 1024}}})
    with pytest.raises(TemplateError) as info:
        check_prompts(cfg, load_templates(cfg), counter=_words)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{ROOT}/prompts/propose.completion.txt: the propose prompt without "
                           f"its seed text is ")
    assert line.endswith("with stages.propose.max_tokens 1024 leaves no room in "
                         "models.local.n_ctx 1024; lower max_tokens, shorten the template, or "
                         "raise n_ctx")
