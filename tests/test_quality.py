"""`selfinstruct sample --judge`: the quality judge asks through the provider interface and the
gate, like the pipeline; an API model, the embedded model, a judge that cannot be reached."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from actors.providers.llm import Completion
from actors.tools.quality import QUESTIONS, judge_messages, judge_rows, ungraded
from tests.conftest import ROOT
from tests.runs import config, lines
from tests.servers import free_port

SEEDS = ROOT / "seeds" / "seed_tasks.jsonl"


def test_judge_rows_take_the_answers_and_say_what_failed():
    rows = [{"instruction": "Add 2 and 3.", "input": "", "output": "5",
             "grades": dict.fromkeys(QUESTIONS)} for _ in range(3)]
    answers = [Completion("1. Yes\n2. Yes\n3. No\n4. No", "stop", "judge-m"),
               Completion("I cannot say.", "stop", "judge-m"),
               Completion("", "error", "judge-m", error="APIConnectionError: refused")]
    out = judge_rows(rows, answers, "judge-m")
    assert out[0]["grades"] == {"valid_instruction": True, "input_fits": True,
                                "output_correct": False, "all_fine": False}
    assert out[1]["grades"] == dict.fromkeys(QUESTIONS) and "judge_error" not in out[1]
    assert out[2]["judge_error"].startswith("APIConnectionError")
    assert all(r["graded_by"] == "judge-m" for r in out)
    assert ungraded(out) == 2
    asked = judge_messages(rows[0])
    assert [m["role"] for m in asked] == ["system", "user", "assistant", "user"]
    assert asked[-1]["content"].startswith("Instruction: Add 2 and 3.\nInput: (none)\nOutput: 5")
    assert "Does the instruction describe a valid task?" in asked[-1]["content"]


# -- through the gate (a local Ray in this process) ------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _ray_down_after():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _sample(tmp_path: Path, model: dict[str, Any] | None, n: int) -> tuple[int, list[dict]]:
    from actors.cli import main

    cfg = config(tmp_path, ray={"address": "local"},
                 **({"models": {"judge": model}} if model else {}))
    out = tmp_path / "q.jsonl"
    rc = main(["sample", str(SEEDS), "--n", str(n), "--judge", "judge" if model else "local",
               "--config", str(cfg), "--out", str(out)])
    return rc, lines(out)


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["openai_compatible", "anthropic"])
def test_an_api_judge_fills_every_grade(tmp_path, monkeypatch, capsys, provider):
    from tests.fakeapi import serve

    monkeypatch.setenv("SI_FAKE_KEY", "sk-test-quality")
    with serve() as srv:
        base = srv.url + ("/v1" if provider == "openai_compatible" else "")
        rc, rows = _sample(tmp_path, {"provider": provider, "model": "fake-judge",
                                      "base_url": base, "api_key_env": "SI_FAKE_KEY"}, 5)
        stats = srv.stats()
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert json.loads(printed)["ungraded"] == 0, printed
    assert stats["by_stage"] == {"judge": 5}
    assert len(rows) == 5
    for row in rows:
        assert all(row["grades"][q] is not None for q in QUESTIONS), row
        assert row["graded_by"] == "fake-judge" and row["judge_answer"].startswith("1. ")


@pytest.mark.slow
def test_an_unreachable_judge_fails_and_says_so(tmp_path, capsys):
    rc, rows = _sample(tmp_path, {"provider": "openai_compatible", "model": "gone",
                                  "base_url": f"http://127.0.0.1:{free_port()}/v1",
                                  "max_retries": 0, "timeout_s": 2}, 2)
    assert rc == 1
    assert "2 judge request(s) failed" in capsys.readouterr().err
    assert all(r["judge_error"] and r["grades"] == dict.fromkeys(QUESTIONS) for r in rows)


@pytest.mark.slow
def test_the_embedded_model_fills_every_grade(tmp_path, capsys):
    rc, rows = _sample(tmp_path, None, 3)
    assert rc == 0, capsys.readouterr().err
    assert len(rows) == 3
    for row in rows:
        assert all(row["grades"][q] is not None for q in QUESTIONS), row["judge_answer"]
        assert row["graded_by"] == "SmolLM2-135M-Instruct-Q4_1"
