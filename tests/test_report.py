import json

import matplotlib.image as mpimg
import pytest
from datasets import load_from_disk
from rouge_score import rouge_scorer

from actors.cli import main
from actors.method.seeds import load_seeds
from actors.tools.analysis import (
    histogram,
    load_spacy,
    max_rouge_to,
    spacy_verb_noun,
    verb_noun_diversity,
)
from actors.tools.export import FORMATS, examples_from, export, load_templates, split
from actors.tools.quality import draw_sample, grade_percentages, parse_judgement
from actors.tools.report import write_report
from tests.conftest import ROOT

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

# A hand-made dataset whose root verbs and direct objects are known.
TASKS = [
    ("Write a poem about the sea.", "", "Waves roll in.", False),
    ("Write a poem about winter mornings.", "", "Frost on glass.", False),
    ("Write a letter to your landlord about the heating.", "", "Dear landlord, ...", False),
    ("Classify the sentiment of the review.", "I loved it.", "positive", True),
    ("Classify the topic of the headline.", "Stocks rally.", "business", True),
    ("Summarize the paragraph in one sentence.", "Long text here.", "Short.", False),
    ("What is the capital of France?", "", "Paris.", False),
]
EXPECTED = {("write", "poem"): 2, ("write", "letter"): 1, ("classify", "sentiment"): 1,
            ("classify", "topic"): 1, ("summarize", "paragraph"): 1}


@pytest.fixture(scope="module")
def parse():
    return spacy_verb_noun(load_spacy())


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = []
    for k, (ins, inp, out, cls) in enumerate(TASKS):
        rows.append({"id": f"task_{k:06d}", "name": f"t{k}", "instruction": ins,
                     "instances": [{"input": inp, "output": out}], "is_classification": cls,
                     "provenance": {}})
    (run / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # One commit with three responses' usage, then one per task written.
    commits = [{"time": 999.0, "lines": {"responses": 3},
                "usage": {"propose:m": {"prompt_tokens": 30, "completion_tokens": 15}}}]
    commits += [{"time": 1000.0 + k, "lines": {"dataset": 1}, "usage": {}}
                for k in range(len(rows))]
    (run / "commits.jsonl").write_text("".join(json.dumps(c) + "\n" for c in commits))
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"id": "s0", "instruction": "Write a poem about the sea.",
                                 "instances": [{"input": "", "output": "x"}],
                                 "is_classification": False}) + "\n")
    counts = {"propose": {"in": 3, "accepted": 3, "rejected": 0, "reasons": {}},
              "dedup": {"in": 9, "accepted": 7, "rejected": 2, "reasons": {"rouge_l": 2}},
              "task": {"in": 7, "accepted": 7, "rejected": 0, "reasons": {}}}
    (run / "run.json").write_text(json.dumps({
        "counts": counts, "acceptance": {"dedup": 7 / 9}, "usage": {},
        "timings": {"wall_s": 1.0}, "config": {"seeds": [str(seeds)]}}))
    return run


def test_verb_noun_counts_on_known_sentences(parse):
    pairs = parse([t[0] for t in TASKS])
    counts = {}
    for p in pairs:
        if p[0] and p[1]:
            counts[p] = counts.get(p, 0) + 1
    assert counts == EXPECTED
    assert pairs[-1] == (None, None)  # a question has no root verb
    div = verb_noun_diversity(pairs)
    assert div.top[0] == ("write", 3, [("poem", 2), ("letter", 1)])
    assert (div.unique_verbs, div.unique_pairs, div.with_verb) == (3, 5, 6)


def test_novelty_is_exact_rouge(tmp_path):
    refs = ["Write a poem about the sea.", "Name three rivers."]
    texts = ["Write a poem about winter mornings.", "Name three big rivers in Asia.", "!!"]
    want = [max(SCORER.score(r, t)["rougeL"].fmeasure for r in refs) for t in texts]
    assert max_rouge_to(refs, texts) == want
    assert histogram([0.0, 0.05, 0.1, 0.99, 1.0]) == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]


def test_report_on_a_run_dir(tmp_path, parse):
    run = _run_dir(tmp_path)
    data = write_report(run, parse=parse)
    assert data["tasks"] == 7 and data["classification"] == 2
    top = {t["verb"]: t for t in data["diversity"]["top"]}
    assert top["write"]["count"] == 3 and top["write"]["objects"][0] == ["poem", 2]
    assert data["novelty"]["max_rouge_l"][0] == 1.0  # the seed itself
    assert data["lengths"]["instruction"]["max"] == 9
    assert set(data["figures"]) == {"verb_noun.png", "rouge_to_seeds.png", "lengths.png",
                                    "share.png", "funnel.png", "throughput.png"}
    report = run / "report"
    for name in data["figures"]:
        image = mpimg.imread(report / name)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert f'src="{name}"' in (report / "index.html").read_text()
    assert json.loads((report / "summary.json").read_text())["tasks"] == 7


def test_report_cli_on_a_seed_file(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(ROOT / "seeds" / "seed_tasks.jsonl"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tasks" in text and "175" in text and "unique root verbs" in text
    assert (out / "index.html").is_file() and (out / "verb_noun.png").is_file()


@pytest.mark.parametrize("made,what", [
    (True, "a folder without dataset.jsonl, so not a run directory"),
    (False, "not found"),
])
def test_report_refuses_what_is_neither_a_run_nor_a_seed_file(tmp_path, capsys, made, what):
    path = tmp_path / "run"
    if made:
        path.mkdir()
    assert main(["report", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: {what}; `report` expects a run directory (holding dataset.jsonl) or a "
        f"seed-schema JSONL file\n")
    assert sorted(tmp_path.rglob("*")) == ([path] if made else [])  # no report written


def test_quality_sample_and_grades(tmp_path, capsys):
    tasks = load_seeds(ROOT / "seeds" / "seed_tasks.jsonl")
    rows = draw_sample(tasks, 200, seed=1)
    assert len(rows) == 175 and len({r["task_id"] for r in rows}) == 175
    assert draw_sample(tasks, 10, seed=1) == draw_sample(tasks, 10, seed=1)
    assert parse_judgement("1. Yes\n2. No\n3. yes") == {
        "valid_instruction": True, "input_fits": False, "output_correct": True,
        "all_fine": False}
    assert parse_judgement("garbage")["valid_instruction"] is None
    graded = [{"grades": {"valid_instruction": True, "input_fits": None,
                          "output_correct": False, "all_fine": False}},
              {"grades": {"valid_instruction": False, "input_fits": True,
                          "output_correct": True, "all_fine": True}}]
    assert grade_percentages(graded) == {"valid_instruction": 0.5, "input_fits": 1.0,
                                         "output_correct": 0.5, "all_fine": 0.5}
    run = _run_dir(tmp_path)
    assert main(["sample", str(run), "--n", "3"]) == 0
    lines = (run / "quality_sample.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["grades"]["all_fine"] is None


def _many_tasks():
    from actors.method.seeds import SeedInstance, SeedTask
    tasks = [SeedTask(f"t{k}", f"n{k}", f"Do thing number {k} well.",
                      tuple(SeedInstance(f"in {j}" if j % 2 else "", f"out {k}-{j}")
                            for j in range(7)), False) for k in range(40)]
    # duplicates and a conflicting task are filtered as prepare_for_finetuning.py does
    tasks.append(SeedTask("dup", "d", "Repeat yourself please now.",
                          (SeedInstance("a", "b"), SeedInstance("a", "b")), False))
    tasks.append(SeedTask("bad", "b", "Conflicting outputs here now.",
                          (SeedInstance("a", "b"), SeedInstance("a", "c")), False))
    return tasks


def test_export_filters_and_splits_by_task():
    ex = examples_from(_many_tasks())
    assert sum(e.task_id == "t0" for e in ex) == 5           # at most 5 per task
    assert sum(e.task_id == "dup" for e in ex) == 1          # exact duplicates removed
    assert not any(e.task_id == "bad" for e in ex)           # conflicting task dropped
    train, val = split(ex, 0.1, seed=3)
    assert {e.task_id for e in train}.isdisjoint({e.task_id for e in val})
    assert len({e.task_id for e in val}) == 4
    assert split(ex, 0.1, seed=3) == (train, val)


def test_templates_file_has_six_of_each_family():
    t = load_templates(ROOT / "prompts" / "finetune_templates.yaml")
    assert len(t["with_input"]) >= 6 and len(t["no_input"]) >= 6


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_loads_back_with_its_reader(tmp_path, fmt):
    out = tmp_path / fmt
    summary = export(_many_tasks(), fmt, out, 0.1, 0, ROOT / "prompts" /
                     "finetune_templates.yaml")
    assert summary["train"] > 0 and summary["validation"] > 0
    if fmt == "hf":
        ds = load_from_disk(str(out))
        assert set(ds) == {"train", "validation"}
        assert ds["train"].num_rows == summary["train"]
        assert set(ds["train"].column_names) == {"instruction", "input", "output", "task_id"}
        return
    if fmt == "alpaca":
        rows = json.loads((out / "train.json").read_text())
        assert {"instruction", "input", "output"} <= set(rows[0])
        return
    rows = [json.loads(line) for line in (out / "train.jsonl").open()]
    assert len(rows) == summary["train"]
    if fmt == "openai-chat":
        for r in rows:  # the chat fine-tuning schema: a list of role/content messages
            assert set(r) == {"messages"}
            assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
            assert all(isinstance(m["content"], str) and m["content"] for m in r["messages"])
    elif fmt == "sharegpt":
        assert [c["from"] for c in rows[0]["conversations"]] == ["human", "gpt"]
    else:
        used = {r["template"] for r in rows}
        assert any(u.startswith("with_input") for u in used)
        assert any(u.startswith("no_input") for u in used)
        assert len(used) >= 8  # drawn at random among the families
        assert all("{{" not in r["prompt"] + r["completion"] for r in rows)


def test_export_cli_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.jsonl"), "--format", "alpaca",
                 "--out", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err
