from actors.config import PipelineConfig
from actors.engine.summary import acceptance, flow_checks
from actors.method.prompts import Shot, load_template
from actors.method.stages import StageLogic
from actors.providers.llm import Completion
from tests.conftest import ROOT

SHOTS = [Shot(f"seed_task_{i}", f"Seed instruction number {i}.") for i in range(8)]


def stages(**modes):
    cfg = PipelineConfig()
    names = {"propose": "propose", "classify": "classify",
             "instances_input_first": "instances", "instances_output_first": "instances"}
    templates = {n: load_template(ROOT / "prompts", n, modes.get(s, "completion"))
                 for n, s in names.items()}
    return StageLogic(cfg, templates)


def test_propose_prompt_is_the_papers():
    prompt = stages().propose_prompt(SHOTS)
    assert prompt.startswith("Come up with a series of tasks:\n1. Seed instruction number 0.\n")
    assert prompt.endswith("8. Seed instruction number 7.\n9.")


def test_propose_outcome_filters_and_counts():
    text = (" Explain how rainbows form in the sky.\n10. Describe the image above.\n"
            "11. Too short.\n12. Give three tips for saving money on groceries.")
    out = stages().propose_outcome(12, SHOTS, Completion(text, "stop", "m"))
    cands = out.candidates
    assert [c["instruction"] for c in cands] == [
        "Explain how rainbows form in the sky.", "Give three tips for saving money on groceries."]
    assert cands[0]["shots"] == [s.id for s in SHOTS] and cands[0]["response_id"] == "prop_0000012"
    assert cands[0]["prompt"] == 12 and cands[0]["cid"] == "prop_0000012.0"
    assert sorted(r["rule"] for r in out.rejected) == ["keywords", "word_count"]
    assert out.accepted == {"propose": 1, "filter": 2}
    assert out.responses[0]["id"] == out.key == "prop_0000012"
    assert "cost_usd" not in out.responses[0] and "error" not in out.responses[0]  # zeros left out
    assert out.cached == []
    cached = stages().propose_outcome(12, SHOTS, Completion(text, "stop", "m", cached=True))
    assert cached.cached == ["prop_0000012"] and "cached" not in cached.responses[0]


def test_truncated_and_failed_responses_are_rejections():
    out = stages().propose_outcome(1, SHOTS, Completion(" A task here now.", "length", "m"))
    assert out.rejected[0]["stage"] == "propose" and out.rejected[0]["rule"] == "truncated"
    out = stages().propose_outcome(1, SHOTS, Completion("", "error", "m", error="HTTP 500"))
    assert out.rejected[0]["rule"] == "error" and out.rejected[0]["reason"] == "HTTP 500"


def _task(is_cls):
    return {"id": "task_000001", "instruction": "Decide if the review is positive.",
            "shots": ["a"], "model": "m", "response_id": "r", "is_classification": is_cls,
            "classify": {"answer": "yes"}, "rouge": {"max": 0.2, "neighbours": []}}


def test_instance_outcome_builds_the_seed_schema_record():
    text = "Class label: Positive\nInput: Great food.\nClass label: Negative\nInput: Cold soup."
    out = stages().instance_outcome(_task(True), Completion(text, "stop", "m"))
    assert out.accepted == {"instances": 2}  # the writer counts a task when it writes it
    assert out.key == "i-task_000001"
    rec = out.dataset[0]
    assert rec["instances"] == [{"input": "Great food.", "output": "Positive"},
                                {"input": "Cold soup.", "output": "Negative"}]
    assert rec["provenance"]["instances"]["mode"] == "output_first"
    assert set(rec) == {"id", "name", "instruction", "instances", "is_classification",
                        "provenance"}


def test_instance_outcome_rejects_a_task_with_nothing_left():
    out = stages().instance_outcome(_task(False),
                                    Completion("Input: same\nOutput: same", "stop", "m"))
    assert out.dataset == [] and out.accepted == {"instances": 0}
    assert [r["stage"] for r in out.rejected] == ["instances", "task"]


def test_chat_forms_render_messages():
    s = stages(classify="chat", instances="chat")
    msgs = s.classify_prompt("Is it spam?")
    assert msgs[-1] == {"role": "user", "content": "Task: Is it spam?\nIs it classification?"}
    assert s.instance_prompt(_task(True))[-1]["content"].startswith("Task: Decide")


def test_flow_checks_count_pending_work_and_acceptance():
    st = {"filter": {"in": 10, "accepted": 8, "rejected": 2, "reasons": {}},
          "dedup": {"in": 6, "accepted": 3, "rejected": 3, "reasons": {}},
          "classify": {"in": 2, "accepted": 2, "rejected": 0, "reasons": {}},
          "task": {"in": 1, "accepted": 1, "rejected": 0, "reasons": {}}}
    pending = {"candidates": 2, "unclassified": 1, "classified": 1}
    assert all(flow_checks(st, pending).values())
    assert acceptance(st)["dedup"] == 0.5
    # Each check catches its own imbalance, and only that one.
    for check, stage, key in [("per_stage_in_equals_accepted_plus_rejected", "task", "rejected"),
                              ("filter_accepted_equals_dedup_in_plus_pending", "", "candidates"),
                              ("dedup_accepted_equals_classify_in_plus_pending", "",
                               "unclassified"),
                              ("classify_accepted_equals_task_in_plus_pending", "",
                               "classified")]:
        st2 = {name: dict(counts) for name, counts in st.items()}
        pending2 = dict(pending)
        (st2[stage] if stage else pending2)[key] += 1
        assert [k for k, ok in flow_checks(st2, pending2).items() if not ok] == [check]


def test_classify_outcome_labels_and_records():
    task, out = stages().classify_outcome(_task(None), Completion(" Yes", "stop", "m"))
    assert task["is_classification"] is True and task["classify"]["answer"] == "yes"
    assert out.key == "c-task_000001" and out.accepted == {"classify": 1}


def test_answers_asked_again_and_served_from_the_cache_count_as_cache_hits():
    from actors.providers.llm import Attempt

    bad = Attempt(Completion("??", "stop", "m", cached=True), "no instance")
    out = stages().instance_outcome(_task(False), Completion("Output: 4", "stop", "m",
                                                             cached=True), [bad])
    assert out.cached == ["i-task_000001~1", "i-task_000001"]
    assert [r["id"] for r in out.responses] == ["i-task_000001~1", "i-task_000001"]
