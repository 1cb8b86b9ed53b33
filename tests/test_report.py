import json
import re
import time
from collections import Counter

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from datasets import load_from_disk
from matplotlib.path import Path as Shape
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
from actors.tools.viewer import PAGE_ROWS
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
    ("What is the capital of France?", "", "Paris. </script><script>window.pwned = 1</script>",
     False),
]
EXPECTED = {("write", "poem"): 2, ("write", "letter"): 1, ("classify", "sentiment"): 1,
            ("classify", "topic"): 1, ("summarize", "paragraph"): 1}


@pytest.fixture(scope="module")
def parse():
    return spacy_verb_noun(load_spacy())


def provenance(k: int, cls: bool, neighbours: list[tuple[str, float]]) -> dict:
    """A dataset line's provenance as the pipeline writes it (method/stages.task_record)."""
    return {"shots": ["s0", *(f"task_{j:06d}" for j in range(max(0, k - 2), k))],
            "propose": {"model": "proposer", "response_id": f"prop_{k // 5:07d}"},
            "classify": {"model": "judge", "response_id": f"c-task_{k:06d}",
                         "answer": "yes" if cls else "no"},
            "instances": {"model": "writer", "response_id": f"i-task_{k:06d}",
                          "mode": "output_first" if cls else "input_first", "dropped": []},
            "rouge": {"max": max((s for _, s in neighbours), default=0.1), "max_exact": True,
                      "neighbours": [{"id": i, "score": s} for i, s in neighbours]}}


# rejected.jsonl as the pipeline writes it: stage, rule, reason, the item. The first item tries
# to break out of the page's data block.
REJECTED = [
    ("filter", "keywords", "contains 'map'",
     {"instruction": "Draw a map </script><img src=x onerror=window.pwned=2>", "shots": ["s0"]}),
    ("dedup", "rouge_l", "ROUGE-L 1.0000 to s0",
     {"instruction": "Write a poem about the sea.", "shots": ["s0", "task_000000"],
      "rouge": {"max": 1.0, "max_exact": True, "neighbours": [{"id": "s0", "score": 1.0}]}}),
    ("dedup", "rouge_l", "ROUGE-L 0.8000 to task_000001",
     {"instruction": "Write a poem about winter.", "shots": ["s0"],
      "rouge": {"max": 0.8, "max_exact": True,
                "neighbours": [{"id": "task_000001", "score": 0.8}]}}),
    ("instances", "truncated", "cut off by the length limit",
     {"id": "task_000002", "instruction": TASKS[2][0], "input": "", "output": "Dear land"}),
    ("task", "no_valid_instances", "no instance survived: truncated",
     {"id": "task_000007", "instruction": "Translate the sentence into French."}),
]


def make_run(tmp_path):
    """A small run directory in the pipeline's format: TASKS with provenance, REJECTED, the
    commits, and run.json whose funnel counts match the rejections."""
    run = tmp_path / "run"
    run.mkdir()
    rows = []
    for k, (ins, inp, out, cls) in enumerate(TASKS):
        rows.append({"id": f"task_{k:06d}", "name": f"t{k}", "instruction": ins,
                     "instances": [{"input": inp, "output": out}], "is_classification": cls,
                     "provenance": provenance(k, cls, [("s0", 0.5)] if k < 2 else [])})
    (run / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rejected = [{"id": f"rej_{k + 1:07d}", "stage": stage, "rule": rule, "reason": reason,
                 "item": item} for k, (stage, rule, reason, item) in enumerate(REJECTED)]
    (run / "rejected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejected))
    # One commit with three responses' usage and the rejections, then one per task written.
    commits = [{"time": 999.0, "lines": {"responses": 3, "rejected": len(rejected)},
                "usage": {"propose:m": {"prompt_tokens": 30, "completion_tokens": 15}}}]
    commits += [{"time": 1000.0 + k, "lines": {"dataset": 1}, "usage": {}}
                for k in range(len(rows))]
    (run / "commits.jsonl").write_text("".join(json.dumps(c) + "\n" for c in commits))
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"id": "s0", "instruction": "Write a poem about the sea.",
                                 "instances": [{"input": "", "output": "x"}],
                                 "is_classification": False}) + "\n")
    counts = {"propose": {"in": 3, "accepted": 3, "rejected": 0, "reasons": {}},
              "filter": {"in": 11, "accepted": 10, "rejected": 1, "reasons": {"keywords": 1}},
              "dedup": {"in": 10, "accepted": 8, "rejected": 2, "reasons": {"rouge_l": 2}},
              "task": {"in": 8, "accepted": 7, "rejected": 1,
                       "reasons": {"no_valid_instances": 1}},
              "instances": {"in": 8, "accepted": 7, "rejected": 1, "reasons": {"truncated": 1}}}
    (run / "run.json").write_text(json.dumps({
        "counts": counts, "acceptance": {"dedup": 8 / 10}, "usage": {},
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
    run = make_run(tmp_path)
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
    page = (out / "index.html").read_text(encoding="utf-8")
    data = viewer_block(page)  # a seed file has tasks and no rejections
    assert len(data["tasks"]["id"]) == 175 and data["tasks"]["provenance"][0] == {}
    assert not data["run"] and data["rejections"]["id"] == [] and "#rejections" not in page


BLOCK = re.compile(r'<script type="application/json" id="viewer-data">(.*?)</script>', re.S)


def viewer_block(page: str) -> dict:
    """The viewer's data as a browser reads it: the block ends at the first '</script>'."""
    return json.loads(BLOCK.search(page).group(1))


def test_viewer_embeds_every_task_and_rejection(tmp_path, parse):
    run = make_run(tmp_path)
    write_report(run, parse=parse)
    page = (run / "report" / "index.html").read_text(encoding="utf-8")
    data = viewer_block(page)
    tasks = [json.loads(line) for line in (run / "dataset.jsonl").open()]
    got = data["tasks"]
    assert got["id"] == [t["id"] for t in tasks]
    assert got["instruction"] == [t["instruction"] for t in tasks]
    assert got["instances"] == [[[i["input"], i["output"]] for i in t["instances"]]
                                for t in tasks]
    assert got["provenance"] == [t["provenance"] for t in tasks]
    assert got["cls"] == [int(t["is_classification"]) for t in tasks]
    # the parse that draws the ring chart is the one the verb filter uses
    assert list(zip(got["verb"], got["noun"], strict=True))[:4] == [
        ("write", "poem"), ("write", "poem"), ("write", "letter"), ("classify", "sentiment")]
    assert (got["verb"][6], got["noun"][6]) == ("", "")  # a question: no root verb
    rejected = [json.loads(line) for line in (run / "rejected.jsonl").open()]
    assert [dict(zip(data["rejections"], row, strict=True))
            for row in zip(*data["rejections"].values(), strict=True)] == rejected
    # shots and neighbours name seed s0 and run tasks; only the seed needs its text carried
    assert data["names"] == {"s0": "Write a poem about the sea."}
    # The instance output and the rejected instruction that hold '</script>' stay inside the
    # block (viewer_block would cut them short); the table is drawn by the script, a page at
    # a time.
    assert "<" not in BLOCK.search(page).group(1)
    assert page.count("</script>") == 2 and data["page_rows"] == PAGE_ROWS == 100
    assert "<tbody></tbody>" in page


FIGURE = re.compile(r'<figure id="fig-([a-z_]+)">(.*?)</figure>', re.S)
SVG = re.compile(r'<svg viewBox="([^"]+)"[^>]*>(.*?)</svg>', re.S)
LINK = re.compile(r'<a href="([^"]+)"><title>[^<]*</title><polygon points="([^"]+)"/></a>')


def _colour_under(png, viewbox: str, points: str) -> np.ndarray:
    """The commonest colour of the PNG's pixels inside a link's polygon (the SVG's units are
    inches, its viewBox the PNG's extent)."""
    x0, y0, w, h = map(float, viewbox.split())
    rows, cols = png.shape[:2]
    poly = np.array([[float(v) for v in p.split(",")] for p in points.split()])
    poly = (poly - [x0, y0]) / [w, h] * [cols, rows]
    (left, top), (right, bottom) = poly.min(axis=0), poly.max(axis=0)
    grid = np.array([(x, y) for x in np.arange(left, right, 2) for y in np.arange(top, bottom, 2)])
    inside = grid[Shape(poly).contains_points(grid)].astype(int)
    colours = Counter(tuple(np.round(png[y, x, :3] * 255).astype(int)) for x, y in inside)
    return np.array(colours.most_common(1)[0][0]) / 255


def _same_colour(a: np.ndarray, b) -> bool:
    return bool(np.abs(a - np.array(b[:3])).max() <= 0.01)


def test_figure_links_lie_on_the_shapes_they_name(tmp_path, parse):
    run = make_run(tmp_path)
    write_report(run, parse=parse)
    report = run / "report"
    figures = {name: (svg[1], dict(LINK.findall(svg[2]))) for name, body in
               FIGURE.findall((report / "index.html").read_text(encoding="utf-8"))
               if (svg := SVG.search(body))}
    assert set(figures) == {"verb_noun", "funnel"}
    tab20 = plt.get_cmap("tab20")
    # One link per rejected bar; bars are coloured by rule in sorted order.
    box, links = figures["funnel"]
    png = mpimg.imread(report / "funnel.png")
    assert abs(png.shape[1] - float(box.split()[2]) * 110) <= 1
    rules = ["keywords", "no_valid_instances", "rouge_l", "truncated"]
    stages = {"keywords": "filter", "no_valid_instances": "task", "rouge_l": "dedup",
              "truncated": "instances"}
    assert set(links) == {f"#rejections?stage={stages[r]}&amp;rule={r}" for r in rules}
    for k, rule in enumerate(rules):
        href = f"#rejections?stage={stages[rule]}&amp;rule={rule}"
        assert _same_colour(_colour_under(png, box, links[href]), tab20(k))
    # One link per verb (inner ring) and per verb's object (outer ring, drawn at alpha 0.55).
    box, links = figures["verb_noun"]
    png = mpimg.imread(report / "verb_noun.png")
    assert set(links) == {"#tasks?verb=write", "#tasks?verb=classify", "#tasks?verb=summarize",
                          "#tasks?verb=write&amp;noun=poem", "#tasks?verb=write&amp;noun=letter",
                          "#tasks?verb=classify&amp;noun=sentiment",
                          "#tasks?verb=classify&amp;noun=topic",
                          "#tasks?verb=summarize&amp;noun=paragraph"}
    for k, verb in enumerate(["write", "classify", "summarize"]):
        assert _same_colour(_colour_under(png, box, links[f"#tasks?verb={verb}"]), tab20(k))
    assert _same_colour(_colour_under(png, box, links["#tasks?verb=write&amp;noun=poem"]),
                        np.array(tab20(0)[:3]) * 0.55 + 0.45)


@pytest.mark.slow
def test_report_page_at_50k_tasks(tmp_path):
    run = big_run(tmp_path, 50_000, 20_000)
    start = time.perf_counter()
    write_report(run, parse=lambda texts: [(t.split()[0].lower(), None) for t in texts])
    took = time.perf_counter() - start
    page = run / "report" / "index.html"
    data_bytes = sum((run / f).stat().st_size for f in ("dataset.jsonl", "rejected.jsonl"))
    print(f"50,000 tasks and 20,000 rejections ({data_bytes / 1e6:.1f} MB of JSONL): "
          f"index.html {page.stat().st_size / 1e6:.1f} MB, written in {took:.1f} s")
    # The page carries the rows once, in columns: no bigger than the files they come from.
    assert page.stat().st_size < data_bytes
    text = page.read_text(encoding="utf-8")
    data = viewer_block(text)
    assert len(data["tasks"]["id"]) == 50_000 and len(data["rejections"]["id"]) == 20_000
    assert "<tbody></tbody>" in text and data["page_rows"] == 100  # drawn a page at a time


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
    run = make_run(tmp_path)
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


WORDS = ["report", "garden", "water", "city", "music", "travel", "family", "school", "market",
         "price", "story", "data", "people", "review", "coffee", "river", "morning", "history",
         "product", "customer"]
VERBS = ["write", "explain", "classify", "summarize", "list", "describe", "create", "generate",
         "find", "translate", "suggest", "compare", "rewrite", "identify", "give"]


def big_run(tmp_path, n_tasks: int, n_rejected: int):
    """A run directory of n_tasks tasks and n_rejected dedup rejections whose lines are as long
    as a real run's (about 700 bytes a task: a dozen-word instruction, two or three instances,
    eight shots, ROUGE-L neighbours), for measuring the report at scale."""
    run = tmp_path / "big"
    run.mkdir()
    texts = [" ".join(WORDS[(k * 7 + j * 3) % len(WORDS)] for j in range(8 + k % 9)).capitalize()
             for k in range(101)]
    with (run / "dataset.jsonl").open("w") as fh:
        for k in range(n_tasks):
            nb = [(f"task_{k - j:06d}", 0.5 + j / 10) for j in range(1, k % 3 + 1) if k >= j]
            fh.write(json.dumps({
                "id": f"task_{k:06d}", "name": f"t{k}",
                "instruction": f"{VERBS[k % len(VERBS)].capitalize()} the "
                               f"{texts[k % 101].lower()} number {k}.",
                "instances": [{"input": texts[(k + j) % 101], "output": texts[(k * 3 + j) % 101]}
                              for j in range(2 + k % 2)],
                "is_classification": k % 5 == 0,
                "provenance": provenance(k, k % 5 == 0, nb) | {
                    "shots": [f"seed_task_{(k + j) % 175}" for j in range(6)] +
                             [f"task_{max(0, k - j):06d}" for j in (1, 2)]}}) + "\n")
    with (run / "rejected.jsonl").open("w") as fh:
        for k in range(n_rejected):
            fh.write(json.dumps({
                "id": f"rej_{k + 1:07d}", "stage": "dedup", "rule": "rouge_l",
                "reason": f"ROUGE-L 0.8000 to task_{k % n_tasks:06d}",
                "item": {"response_id": f"prop_{k:07d}", "prompt": k,
                         "shots": [f"seed_task_{(k + j) % 175}" for j in range(8)],
                         "model": "proposer", "cid": f"prop_{k:07d}.1",
                         "instruction": f"Write the {texts[k % 101]}.",
                         "rouge": {"max": 0.8, "max_exact": True, "neighbours": [
                             {"id": f"task_{k % n_tasks:06d}", "score": 0.8}]}}}) + "\n")
    counts = {"dedup": {"in": n_tasks + n_rejected, "accepted": n_tasks,
                        "rejected": n_rejected, "reasons": {"rouge_l": n_rejected}},
              "task": {"in": n_tasks, "accepted": n_tasks, "rejected": 0, "reasons": {}}}
    (run / "run.json").write_text(json.dumps({"counts": counts, "config": {"seeds": []}}))
    return run
