"""`selfinstruct evaluate`: the pure parts (prompts, parsing rules, kappa, the summary, the
resume check) without Ray; then whole evaluations on the fake API server and on the embedded
model (slow: they start a local Ray in this process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import pytest

from actors.config import load_config
from actors.method.prompts import load_template
from actors.method.seeds import SeedInstance, SeedTask
from actors.rundir.resume import ResumeError
from actors.tools.evaluate import (
    DEFAULT_TASKS,
    EvalError,
    EvalOptions,
    answer_prompt,
    category_of,
    check_eval_resume,
    cohen_kappa,
    combine_orders,
    eval_fingerprint,
    grade_prompt,
    items_of,
    load_human,
    load_tasks,
    pairwise_prompt,
    parse_grade,
    parse_preference,
    select_tasks,
    summarize_eval,
    write_eval_report,
)
from actors.tools.export import load_templates
from tests.conftest import ROOT, SHARED
from tests.runs import config, lines

# -- tasks and prompts ----------------------------------------------------------------------


def test_the_shipped_tasks_are_the_papers_252_with_their_licence():
    tasks = load_tasks(DEFAULT_TASKS)
    assert len(tasks) == 252 and all(len(t.instances) == 1 for t in tasks)
    assert category_of(tasks[0]) == "Grammarly"
    assert len({category_of(t) for t in tasks}) == 71
    assert "Apache License" in (ROOT / "data" / "LICENSE-self-instruct").read_text()
    shared = SHARED / "self_instruct" / "user_oriented_instructions.jsonl"
    if shared.is_file():
        assert DEFAULT_TASKS.read_bytes() == shared.read_bytes()
    seeds = load_tasks(ROOT / "seeds" / "seed_tasks.jsonl")  # any seed-schema file works too
    assert seeds and category_of(seeds[0]) is None


def test_limit_draws_at_random_keeps_file_order_and_grows_on_resume():
    tasks = load_tasks(DEFAULT_TASKS)
    five, seven = select_tasks(tasks, 5, 0), select_tasks(tasks, 7, 0)
    assert [t.id for t in five] != [t.id for t in tasks[:5]]       # drawn, not the first five
    assert set(t.id for t in five) < set(t.id for t in seven)      # a larger limit keeps them
    index = {t.id: i for i, t in enumerate(tasks)}
    assert [index[t.id] for t in seven] == sorted(index[t.id] for t in seven)
    assert select_tasks(tasks, None, 0) == tasks and select_tasks(tasks, 999, 0) == tasks


TASK = SeedTask("t1", "n", "Rewrite the sentence formally.",
                (SeedInstance("gonna go now", "I am leaving now."), SeedInstance("", "Hello.")),
                False, {"motivation_app": "Grammarly"})


def test_answer_prompts_in_chat_and_completion_form():
    assert answer_prompt(TASK, 0, "chat") == [
        {"role": "user", "content": "Rewrite the sentence formally.\n\ngonna go now"}]
    assert answer_prompt(TASK, 1, "chat") == [
        {"role": "user", "content": "Rewrite the sentence formally."}]
    templates = load_templates(ROOT / "prompts" / "finetune_templates.yaml")
    assert answer_prompt(TASK, 0, "completion", templates) == (
        "Rewrite the sentence formally.\n\nInput: gonna go now\n\nOutput:")
    assert answer_prompt(TASK, 1, "completion", templates) == (
        "Rewrite the sentence formally.\n\nOutput:")


def test_judge_prompts_carry_the_rubric_the_question_and_the_answers():
    grade = grade_prompt(load_template(ROOT / "prompts", "judge_grade", "chat"), TASK, 1,
                         "Hi.")
    system, user = grade[0]["content"], grade[1]["content"]
    for level in ("A: the response is valid and satisfying",
                  "B: the response is acceptable, but has minor errors or imperfections",
                  "C: the response is relevant and responds to the instruction, but has "
                  "significant errors", "D: the response is irrelevant or completely invalid",
                  "Grade: <A, B, C or D>"):
        assert level in system
    assert "Instruction: Rewrite the sentence formally.\nInput: (none)\n" in user
    assert "Reference answer: Hello." in user and user.endswith("Response to rate:\nHi.")
    pair = pairwise_prompt(load_template(ROOT / "prompts", "judge_pairwise", "chat"), TASK, 0,
                           "first answer", "")
    assert "Better: <1, 2 or tie>" in pair[0]["content"]
    assert "Response 1:\nfirst answer\n\nResponse 2:\n(none)" in pair[1]["content"]


# -- parsing rules ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, grade, rule", [
    ("Reason: fine.\nGrade: B", "B", "grade_line"),
    ("Reason: fine.\n**Grade:** C", "C", "grade_line"),
    ("RATING-A", "A", "grade_line"),
    ("grade = D+ because it is off topic", "D", "grade_line"),
    ("B: acceptable but a little short", "B", "leading_letter"),
    ("**A**", "A", "leading_letter"),
    ("A response that is fine.", None, None),                   # an article, not a grade
    ("The answer deserves a B.", None, None),                   # not where a rule looks
    ("Grade: A\n\nGrade: C", None, None),                      # two grades: not guessed
    ("Reason: not a grade A answer.\nGrade: B", "B", "grade_line"),  # lines that open so
    ("Grade: E", None, None),
    ("}{ ## ~~ ^^", None, None),
    ("", None, None),
])
def test_grade_rules(text, grade, rule):
    v = parse_grade(text)
    assert (v.value, v.rule) == (grade, rule)
    assert bool(v.problem) == (grade is None)


def test_an_unparseable_grade_says_why_and_keeps_the_reason():
    v = parse_grade("Reason: it rambles.\nGrade: A or maybe C\nGrade: C")
    assert v.value is None and v.problem.startswith("conflicting grades (A, C)")
    assert v.reason == "it rambles."
    assert "no grade found by rules grade_line, leading_letter" in parse_grade("meh").problem
    assert parse_grade("").problem == "the judge's answer is empty"


@pytest.mark.parametrize("text, value, rule", [
    ("Reason: x\nBetter: 2", "2", "better_line"),
    ("Better: Tie", "tie", "better_line"),
    ("Response 1. It is more accurate.", "1", "leading_choice"),
    ("Better: 1\nBetter: 2", None, None),
    ("Both are fine.", None, None),
])
def test_preference_rules(text, value, rule):
    v = parse_preference(text)
    assert (v.value, v.rule) == (value, rule)


def test_both_orders_cancel_position_bias():
    # (verdict with model a shown first, verdict with model b shown first) -> a's outcome
    assert combine_orders("1", "2") == "win"
    assert combine_orders("2", "1") == "loss"
    assert combine_orders("1", "1") == "tie"        # the judge always picks position 1
    assert combine_orders("2", "2") == "tie"
    assert combine_orders("1", "tie") == "win"
    assert combine_orders("tie", "1") == "loss"
    assert combine_orders("tie", "tie") == "tie"
    assert combine_orders(None, "1") is None


def test_cohen_kappa_on_known_tables():
    # 50 items: both A 20, A/D 5, D/A 10, both D 15 -> p_o 0.7, p_e 0.5, kappa 0.4
    pairs = [("A", "A")] * 20 + [("A", "D")] * 5 + [("D", "A")] * 10 + [("D", "D")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([("A", "A"), ("B", "B"), ("C", "C")]) == pytest.approx(1.0)
    assert cohen_kappa([("A", "B"), ("B", "A")]) == pytest.approx(-1.0)
    assert cohen_kappa([("A", "A")] * 4) is None     # one label throughout: undefined
    assert cohen_kappa([]) is None


# -- summary ----------------------------------------------------------------------------------


def _grades(model: str, values: list[str | None], error_at: int = -1) -> dict:
    return {(f"t{i}", 0, model): {"task_id": f"t{i}", "instance": 0, "model": model,
                                  "grade": g, "rule": "grade_line" if g else None,
                                  "error": "boom" if i == error_at else ""}
            for i, g in enumerate(values)}


def _answers(model: str, n: int, error_at: int = -1) -> dict:
    return {(f"t{i}", 0, model): {"answer": "x", "error": "boom" if i == error_at else ""}
            for i in range(n)}


def _pair(a: str, b: str, verdicts: list[tuple[str | None, str | None]]) -> dict:
    out = {}
    for i, (ab, ba) in enumerate(verdicts):
        out[(f"t{i}", 0, a, b)] = {"preference": ab, "error": ""}
        out[(f"t{i}", 0, b, a)] = {"preference": ba, "error": ""}
    return out


def test_summary_counts_shares_categories_pairwise_and_agreement():
    tasks = [SeedTask(f"t{i}", "n", "Do it.", (SeedInstance("", "o"),), False,
                      {"motivation_app": "Gmail" if i < 3 else "Yelp"}) for i in range(5)]
    answers = {**_answers("m", 5), **_answers("n", 5, error_at=4)}
    grades = {**_grades("m", ["A", "A", "B", None, "D"]),
              **_grades("n", ["C", "A", None, None], error_at=1)}
    pairwise = _pair("m", "n", [("1", "2"), ("1", "1"), ("tie", "1"), (None, "2")])
    human = {("t0", 0, "m"): "A", ("t1", 0, "m"): "B", ("t2", 0, "m"): "B",
             ("t4", 0, "m"): "D", ("t0", 0, "n"): "C", ("t3", 0, "m"): "A"}
    s = summarize_eval(tasks, ["m", "n"], answers, grades, pairwise, human)
    m, n = s["models"]["m"], s["models"]["n"]
    assert s["questions"] == 5
    assert m["counts"] == {"A": 2, "B": 1, "C": 0, "D": 1} and m["unparseable"] == 1
    assert m["graded"] == 5 and m["shares"] == {"A": 0.5, "B": 0.25, "C": 0.0, "D": 0.25}
    assert m["rules"] == {"grade_line": 4}
    # n: one failed answer (not graded), one failed judge request (asked again on --resume)
    assert (n["answered"], n["answer_errors"], n["judge_errors"]) == (4, 1, 1)
    assert n["counts"] == {"A": 0, "B": 0, "C": 1, "D": 0} and n["unparseable"] == 2
    assert m["by_category"]["Gmail"]["counts"] == {"A": 2, "B": 1, "C": 0, "D": 0}
    assert m["by_category"]["Yelp"]["unparseable"] == 1
    assert s["pairwise"]["m vs n"] == {"win": 1, "tie": 1, "loss": 1, "unparseable": 1,
                                       "orders_disagree": 2}
    assert m["pairwise"] == {"win": 1, "tie": 1, "loss": 1, "unparseable": 1}
    assert n["pairwise"] == {"win": 1, "tie": 1, "loss": 1, "unparseable": 1}
    h = s["human_agreement"]   # on (t0 m A/A), (t1 m A/B), (t2 m B/B), (t4 m D/D), (t0 n C/C)
    assert h["n"] == 5 and h["agreement"] == 0.8
    assert h["cohen_kappa"] == pytest.approx(round(cohen_kappa(
        [("A", "A"), ("A", "B"), ("B", "B"), ("D", "D"), ("C", "C")]), 4))
    assert h["confusion"]["A"]["B"] == 1


def test_summary_without_grades_has_no_shares():
    s = summarize_eval([TASK], ["m"], {}, {})
    assert s["models"]["m"]["graded"] == 0
    assert s["models"]["m"]["shares"] == dict.fromkeys("ABCD")
    assert "pairwise" not in s and "human_agreement" not in s


def test_human_grades_file_is_checked(tmp_path):
    good = tmp_path / "h.jsonl"
    good.write_text('{"task_id": "t1", "model": "m", "grade": "B"}\n\n'
                    '{"task_id": "t2", "instance": 1, "model": "m", "grade": null}\n')
    assert load_human(good) == {("t1", 0, "m"): "B"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "t1", "model": "m", "grade": "B"}\n'
                   '{"task_id": "t1", "model": "m", "grade": "excellent"}\n')
    with pytest.raises(EvalError, match=r"bad.jsonl:2: grade must be one of A, B, C, D"):
        load_human(bad)
    bad.write_text('{"task_id": "t1"}\n')
    with pytest.raises(EvalError, match=r"bad.jsonl:1: expected a JSON object"):
        load_human(bad)


def test_report_draws_the_papers_figure_and_the_tables(tmp_path):
    tasks = [SeedTask(f"t{i}", "n", "Do it.", (SeedInstance("", "o"),), False,
                      {"motivation_app": "Gmail"}) for i in range(4)]
    s = summarize_eval(tasks, ["m", "n"], {}, {**_grades("m", ["A", "B", "B", None]),
                                                **_grades("n", ["D", "C", "A", "A"])},
                       _pair("m", "n", [("1", "2")]))
    s.update(judge="j", tasks_file="tasks.jsonl", status="completed")
    index = Path(write_eval_report(tmp_path / "report", s))
    page = index.read_text()
    assert mpimg.imread(tmp_path / "report" / "grades.png").shape[0] > 100
    assert '<img src="grades.png"' in page
    assert "<td>1 (33.3%)</td>" in page and "<td>2 (66.7%)</td>" in page   # m: A 1, B 2
    assert "<td>m vs n</td>" in page and "<td>Gmail</td><td>1 / 2 / 0 / 0, 1</td>" in page


# -- fingerprint and resume ----------------------------------------------------------------


def _cfg(tmp_path: Path, **judge: Any):
    return load_config(config(tmp_path, models={
        "a": {"provider": "openai_compatible", "model": "a", "base_url": "http://h/v1"},
        "b": {"provider": "openai_compatible", "model": "b", "base_url": "http://h/v1"},
        "judge": {"provider": "anthropic", "model": "j", **judge}}))


def test_resume_refuses_what_changes_answers_or_grades_and_allows_the_rest(tmp_path):
    cfg = _cfg(tmp_path)
    opts = EvalOptions(models=["a"], judge="judge")
    (tmp_path / "summary.json").write_text(json.dumps({"method": eval_fingerprint(cfg, opts)}))
    # limits, prices, where a model is served, more models, a larger limit: fine
    moved = _cfg(tmp_path, base_url="http://elsewhere", limits={"requests_per_minute": 5},
                 price={"input_per_mtok": 9.0})
    check_eval_resume(tmp_path, eval_fingerprint(moved, EvalOptions(
        models=["a", "b"], judge="judge", limit=50, max_in_flight=3, max_cost=1.0)))
    with pytest.raises(ResumeError, match="judge.max_tokens: was 256, now 100"):
        check_eval_resume(tmp_path, eval_fingerprint(cfg, EvalOptions(
            models=["a"], judge="judge", judge_max_tokens=100)))
    with pytest.raises(ResumeError, match="judge.model.model: was 'j', now 'other'"):
        check_eval_resume(tmp_path, eval_fingerprint(_cfg(tmp_path, model="other"), opts))
    other = _cfg(tmp_path)
    other.models["a"].model = "a-v2"
    with pytest.raises(ResumeError, match="models.a.model: was 'a', now 'a-v2'"):
        check_eval_resume(tmp_path, eval_fingerprint(other, opts))
    with pytest.raises(ResumeError, match="answer.mode: was 'chat', now 'completion'"):
        check_eval_resume(tmp_path, eval_fingerprint(cfg, EvalOptions(
            models=["a"], judge="judge", answer_mode="completion")))
    with pytest.raises(ResumeError, match="no summary.json"):
        check_eval_resume(tmp_path / "nothing", eval_fingerprint(cfg, opts))


def test_items_are_one_per_instance():
    assert items_of([TASK]) == [("t1", 0), ("t1", 1)]


# -- whole evaluations (a local Ray in this process) -----------------------------------------

KEY = "sk-test-eval-0123456789"  # must never appear in the evaluation directory


@pytest.fixture(scope="module", autouse=True)
def _ray_down_after():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _api(model: str, url: str, anthropic: bool = False, **extra: Any) -> dict[str, Any]:
    """A model on a fake server, in OpenAI's wire format or Anthropic's."""
    if anthropic:
        return {"provider": "anthropic", "model": model, "base_url": url,
                "api_key_env": "SI_FAKE_KEY", **extra}
    return {"provider": "openai_compatible", "model": model, "base_url": f"{url}/v1", **extra}


def _config(tmp_path: Path, **models: dict[str, Any]) -> Path:
    """pipeline.yaml with these models, on a Ray of this test's own (not a cluster that
    another process started on this machine)."""
    return config(tmp_path, **({"models": models} if models else {}), ray={"address": "local"})


def _requests(*servers: Any) -> int:
    return sum(s.stats()["requests"] for s in servers)


@pytest.mark.slow
def test_evaluate_on_the_fake_api_then_resume(tmp_path, monkeypatch, capsys):
    from actors.cli import main
    from tests.fakeapi import serve

    monkeypatch.setenv("SI_FAKE_KEY", KEY)
    out = tmp_path / "eval"
    human = tmp_path / "human.jsonl"
    with serve(seed=1) as one, serve(seed=2) as two:
        cfg = _config(
            tmp_path, oai=_api("fake-oai", one.url), claude=_api("fake-claude", two.url, True),
            judge=_api("fake-judge", one.url, True, price={"input_per_mtok": 3.0,
                                                           "output_per_mtok": 15.0}))
        args = ["evaluate", str(cfg), "--models", "oai", "claude", "--judge", "judge",
                "--out", str(out), "--limit", "6", "--pairwise", "--no-progress"]
        tasks = select_tasks(load_tasks(DEFAULT_TASKS), 6, 0)
        human.write_text("".join(json.dumps({"task_id": t.id, "model": "oai", "grade": "A"})
                                 + "\n" for t in tasks[:3]))
        assert main([*args, "--human", str(human)]) == 0, capsys.readouterr().err
        printed = json.loads(capsys.readouterr().out)
        assert _requests(one, two) == 6 * 2 * 3        # answers, grades, pairs in two orders
        answers, grades = lines(out / "answers.jsonl"), lines(out / "grades.jsonl")
        pairs = lines(out / "pairwise.jsonl")
        assert {(a["task_id"], a["model"]) for a in answers} == {
            (t.id, m) for t in tasks for m in ("oai", "claude")}
        assert all(a["answer"] and not a["error"] and a["instance"] == 0 for a in answers)
        assert len(grades) == 12 and len(pairs) == 12
        assert all(g["grade"] in "ABCD" and g["rule"] == "grade_line" and g["reason"]
                   and g["judge"] == "judge" for g in grades)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == printed["status"] == "completed"
        for m in ("oai", "claude"):
            e = summary["models"][m]
            mine = [g["grade"] for g in grades if g["model"] == m]
            assert e["counts"] == {x: mine.count(x) for x in "ABCD"} and e["unparseable"] == 0
            assert sum(e["shares"].values()) == pytest.approx(1.0, abs=1e-3)
            assert sum(c["graded"] for c in e["by_category"].values()) == 6
        verdicts = {(p["task_id"], p["first"]): p["preference"] for p in pairs}
        outcomes = [combine_orders(verdicts[(t.id, "oai")], verdicts[(t.id, "claude")])
                    for t in tasks]
        oai, claude = summary["models"]["oai"]["pairwise"], summary["models"]["claude"][
            "pairwise"]
        assert oai["win"] == outcomes.count("win") == claude["loss"]
        assert oai["tie"] == outcomes.count("tie") == claude["tie"]
        assert summary["human_agreement"]["n"] == 3
        assert summary["usage"]["all"]["requests"] == 36 and summary["spent_usd"] > 0
        assert (out / "report" / "grades.png").is_file()
        assert "oai" in (out / "report" / "index.html").read_text()

        assert main([*args, "--resume"]) == 0               # all done: nothing asked again
        assert _requests(one, two) == 36
        assert main([*args[:-4], "--limit", "8", "--pairwise", "--no-progress",
                     "--resume"]) == 0                      # two more tasks, only those asked
        assert _requests(one, two) == 36 + 2 * 2 * 3
        assert len(lines(out / "grades.jsonl")) == 16
        capsys.readouterr()
        assert main(args) == 2
        assert "already holds an evaluation; add --resume" in capsys.readouterr().err
        assert main([*args, "--resume", "--judge-max-tokens", "99"]) == 2
        assert "judge.max_tokens: was 256, now 99" in capsys.readouterr().err
    for path in out.rglob("*"):
        assert path.is_dir() or KEY.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_a_judge_that_answers_garbage_is_counted_never_guessed(tmp_path, monkeypatch):
    from actors.cli import main
    from tests.fakeapi import serve

    out = tmp_path / "eval"
    with serve() as good, serve(fault_rate=1.0, faults={"garbage": 1}) as bad:
        cfg = _config(tmp_path, oai=_api("fake-oai", good.url),
                      judge=_api("fake-judge", bad.url))
        assert main(["evaluate", str(cfg), "--models", "oai", "--judge", "judge", "--out",
                     str(out), "--limit", "3", "--no-progress"]) == 0
        judged = bad.stats()["requests"]
    grades = lines(out / "grades.jsonl")
    assert len(grades) == 3 and judged == 3 * 3             # each asked again twice
    for g in grades:
        assert g["grade"] is None and g["rule"] is None and g["judge_answer"]
        assert g["problem"].startswith("no grade found") and len(g["retried"]) == 2
    summary = json.loads((out / "summary.json").read_text())
    e = summary["models"]["oai"]
    assert summary["status"] == "completed"
    assert e["unparseable"] == 3 and e["counts"] == dict.fromkeys("ABCD", 0)
    assert e["shares"] == dict.fromkeys("ABCD")
    assert summary["usage"]["by_stage"]["grade"]["requests"] == 9


@pytest.mark.slow
def test_failed_requests_are_recorded_and_asked_again_on_resume(tmp_path, capsys):
    from actors.cli import main
    from tests.fakeapi import serve

    out = tmp_path / "eval"
    with serve() as srv:
        cfg = _config(tmp_path, oai=_api("fake-oai", srv.url, max_retries=0))
        args = ["evaluate", str(cfg), "--models", "oai", "--judge", "oai", "--out", str(out),
                "--limit", "4", "--no-progress"]
        srv.inject("500", 2)                                # two answers fail for good
        assert main(args) == 1
        assert "--resume asks them again" in capsys.readouterr().err
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "incomplete"
        assert summary["models"]["oai"]["answer_errors"] == 2
        assert summary["models"]["oai"]["graded"] == 2      # the failed ones are not graded
        before = srv.stats()["requests"]
        assert main([*args, "--resume"]) == 0
        assert srv.stats()["requests"] - before == 2 + 2    # the two answers, their grades
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["models"]["oai"]["graded"] == 4
    assert len(lines(out / "answers.jsonl")) == 6           # append-only: failures kept


@pytest.mark.slow
def test_max_cost_stops_gracefully_and_resume_goes_on(tmp_path):
    from actors.cli import main
    from tests.fakeapi import serve

    out = tmp_path / "eval"
    with serve() as srv:
        cfg = _config(tmp_path, oai=_api("fake-oai", srv.url),
                      judge=_api("fake-judge", srv.url, price={"input_per_mtok": 200.0,
                                                               "output_per_mtok": 200.0}))
        args = ["evaluate", str(cfg), "--models", "oai", "--judge", "judge", "--out", str(out),
                "--limit", "6", "--no-progress", "--max-in-flight", "2"]
        assert main([*args, "--max-cost", "0.25"]) == 0
        first = json.loads((out / "summary.json").read_text())
        assert first["status"] == "stopped" and first["stop_reason"] == "max_cost"
        assert 0 < first["spent_usd"] <= 0.25
        assert 0 < first["models"]["oai"]["graded"] < 6
        assert main([*args, "--max-cost", "100", "--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["models"]["oai"]["graded"] == 6
    assert len(lines(out / "grades.jsonl")) == 6            # nothing graded twice


@pytest.mark.slow
def test_evaluate_with_the_embedded_model_answering_and_judging(tmp_path):
    from actors.cli import main

    out = tmp_path / "eval"
    assert main(["evaluate", str(_config(tmp_path)), "--models", "local", "--judge",
                 "local", "--out", str(out), "--limit", "2", "--max-tokens", "24",
                 "--judge-max-tokens", "24", "--no-progress"]) == 0
    answers, grades = lines(out / "answers.jsonl"), lines(out / "grades.jsonl")
    assert len(answers) == 2 and all(a["answer"].strip() and not a["error"] for a in answers)
    assert all(a["model_label"] == "SmolLM2-135M-Instruct-Q4_1" for a in answers)
    assert len(grades) == 2
    for g in grades:  # a 135M judge rarely follows the format: then it says why
        assert (g["grade"] in ("A", "B", "C", "D")) != bool(g["problem"])
    e = json.loads((out / "summary.json").read_text())["models"]["local"]
    assert sum(e["counts"].values()) + e["unparseable"] == 2
    assert (out / "report" / "index.html").is_file()
