"""What a resume may change, and the response cache."""

import json

import pytest

from actors.cache import ResponseCache, cache_key
from actors.config import Pipeline
from actors.llm import Completion, Request
from actors.resume import ResumeError, changes, check_resume, fingerprint
from tests.conftest import ROOT

TEMPLATES = [str(p) for p in sorted((ROOT / "prompts").glob("*.txt"))]


def cfg(**stage):
    c = Pipeline(seeds=[str(ROOT / "seeds" / "seed_tasks.jsonl")])
    for k, v in stage.items():
        setattr(c.stages.propose, k, v)
    return c


def test_method_changes_are_named_and_free_settings_are_not():
    base = fingerprint(cfg(), TEMPLATES)
    assert changes(base, fingerprint(cfg(max_in_flight=64), TEMPLATES)) == []
    other = cfg(temperature=0.9)
    other.run.target, other.actors.proposers = 5000, 8
    assert changes(base, fingerprint(other, TEMPLATES)) == [
        "stages.propose.temperature: was 0.7, now 0.9"]


def test_a_changed_seed_file_is_refused(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text((ROOT / "seeds" / "seed_tasks.jsonl").read_text())
    c = cfg()
    c.seeds = [str(seeds)]
    (tmp_path / "run.json").write_text(json.dumps({"method": fingerprint(c, TEMPLATES)}))
    seeds.write_text(seeds.read_text().replace("a", "b", 1))
    with pytest.raises(ResumeError, match="seed_files.seeds.jsonl: file contents changed"):
        check_resume(tmp_path, fingerprint(c, TEMPLATES))


def test_missing_or_corrupted_run_json(tmp_path):
    with pytest.raises(ResumeError, match="nothing to resume"):
        check_resume(tmp_path, {})
    (tmp_path / "run.json").write_text('{"method": {"a"')
    with pytest.raises(ResumeError, match="run.json: corrupted .*data files are intact"):
        check_resume(tmp_path, {})


def test_cache_round_trip_keyed_by_every_parameter(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    req = Request("prompt", 0.7, 0.5, 100, seed=3)
    c = Completion("answer", "stop", "m", 10, 2, 0.5)
    cache.put(cache_key("m", req), c)
    cache.put(cache_key("m", Request("p2", 0.7, 0.5, 100)), Completion("", "error", "m"))
    assert cache.get(cache_key("m", req)) == Completion("answer", "stop", "m", 10, 2, 0.5,
                                                         cached=True)
    assert cache.get(cache_key("m", Request("prompt", 0.7, 0.5, 100, seed=4))) is None
    assert cache.get(cache_key("other", req)) is None
    assert len(ResponseCache(tmp_path / "c.sqlite")) == 1  # errors are not kept
