"""What a resume may change, and the response cache."""

import json
from pathlib import Path

import pytest

from actors.config import PipelineConfig
from actors.providers.cache import ResponseCache, cache_key
from actors.providers.llm import Completion, Request
from actors.rundir.resume import ResumeError, changes, check_resume, fingerprint
from tests.conftest import ROOT

TEMPLATES = [str(p) for p in sorted((ROOT / "prompts").glob("*.txt"))]


def cfg(**stage):
    c = PipelineConfig(seeds=[str(ROOT / "seeds" / "seed_tasks.jsonl")])
    for k, v in stage.items():
        setattr(c.stages.propose, k, v)
    return c


def test_method_changes_are_named_and_free_settings_are_not():
    base = fingerprint(cfg(), TEMPLATES)
    assert changes(base, fingerprint(cfg(max_in_flight_per_actor=64), TEMPLATES)) == []
    other = cfg(temperature=0.9)
    other.run.target, other.actors.proposers = 5000, 8
    assert changes(base, fingerprint(other, TEMPLATES)) == [
        "stages.propose.temperature: was 0.7, now 0.9"]
    other.filters.instruction.word_count.min_words = 5
    other.dedup.threshold, other.run.seed = 0.8, 7
    other.stages.classify.retry_temperature = 0.5  # parse retries change the answers kept
    assert changes(base, fingerprint(other, TEMPLATES)) == [
        "dedup.threshold: was 0.7, now 0.8",
        "filters.instruction.word_count.min_words: was 4, now 5",
        "run.seed: was 0, now 7",
        "stages.classify.retry_temperature: was 0.3, now 0.5",
        "stages.propose.temperature: was 0.7, now 0.9"]
    assert changes({"a": 1, "b": 2}, {"b": 2, "c": 3}) == ["a: removed", "c: added"]


@pytest.mark.parametrize("kind", ["seed_files", "prompt_files"])
def test_a_changed_seed_or_prompt_file_is_refused(tmp_path, kind):
    original = ROOT / "seeds" / "seed_tasks.jsonl" if kind == "seed_files" else Path(TEMPLATES[0])
    changed = tmp_path / original.name
    changed.write_text(original.read_text())
    c = cfg()
    templates = TEMPLATES
    if kind == "seed_files":
        c.seeds = [str(changed)]
    else:
        templates = [str(changed), *TEMPLATES[1:]]
    (tmp_path / "run.json").write_text(json.dumps({"method": fingerprint(c, templates)}))
    assert check_resume(tmp_path, fingerprint(c, templates))
    changed.write_text(changed.read_text().replace("a", "b", 1))
    with pytest.raises(ResumeError, match=f"{kind}.{changed.name}: file contents changed"):
        check_resume(tmp_path, fingerprint(c, templates))


def test_missing_or_corrupted_run_json(tmp_path):
    with pytest.raises(ResumeError, match="nothing to resume"):
        check_resume(tmp_path, {})
    (tmp_path / "run.json").write_text('{"method": {"a"')
    with pytest.raises(ResumeError, match="run.json: corrupted .*data files are intact"):
        check_resume(tmp_path, {})
    (tmp_path / "run.json").write_text('{"seeds": 3}')
    with pytest.raises(ResumeError, match="run.json: has no 'method' fingerprint"):
        check_resume(tmp_path, {})


def test_cache_round_trip_keyed_by_every_parameter(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    req = Request("prompt", 0.7, 0.5, 100, seed=3)
    c = Completion("answer", "stop", "m", 10, 2, 0.5)
    cache.put(cache_key("m", req), c)
    cache.put(cache_key("m", Request("p2", 0.7, 0.5, 100)), Completion("", "error", "m"))
    cache.put(cache_key("m", Request("p3", 0.7, 0.5, 100)), Completion("", "cancelled", "m"))
    # Asked twice in a run: the first answer stays, and the run records it (its replay's).
    assert cache.put(cache_key("m", req), Completion("other", "stop", "m")) == c
    assert cache.get(cache_key("m", req)) == Completion("answer", "stop", "m", 10, 2, 0.5,
                                                         cached=True)
    assert cache.get(cache_key("m", Request("prompt", 0.7, 0.5, 100, seed=4))) is None
    assert cache.get(cache_key("other", req)) is None
    assert len(ResponseCache(tmp_path / "c.sqlite")) == 1  # errors and cancellations are not kept
