import json

import pytest

from actors.method.rouge import rouge_l
from actors.method.seeds import SeedError, load_seeds
from tests.conftest import PAPER_SEEDS, ROOT, need

PROJECT_SEEDS = ROOT / "seeds" / "seed_tasks.jsonl"


def test_project_seeds():
    tasks = load_seeds(PROJECT_SEEDS)
    assert len(tasks) == 175
    assert 20 <= sum(t.is_classification for t in tasks) <= 30
    assert all(t.instances for t in tasks)
    assert len({t.instruction for t in tasks}) == 175


def test_project_seeds_are_not_the_papers():
    ours = [t.instruction for t in load_seeds(PROJECT_SEEDS)]
    paper = [t.instruction for t in load_seeds(need(PAPER_SEEDS))]
    worst = max(rouge_l(p, o) for o in ours for p in paper)
    assert worst < 0.7


def test_paper_file_loads_unchanged():
    tasks = load_seeds(need(PAPER_SEEDS))
    assert len(tasks) == 175
    assert sum(t.is_classification for t in tasks) == 26
    first = json.loads(need(PAPER_SEEDS).open().readline())
    assert tasks[0].to_dict() == first


def test_dataset_with_provenance_round_trips(tmp_path):
    rec = {"id": "task_000001", "name": "n", "instruction": "Do it now please.",
           "instances": [{"input": "", "output": "ok"}], "is_classification": False,
           "provenance": {"shots": ["seed_task_1"]}}
    path = tmp_path / "dataset.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    assert load_seeds(path)[0].to_dict() == rec


@pytest.mark.parametrize("line,message", [
    ("{not json", "line 2: not valid JSON"),
    ('{"id": "b", "instruction": "x", "instances": [], "is_classification": false}',
     "line 2: 'instances' is empty"),
    ('{"id": "b", "instruction": "x", "instances": [{"input": ""}], "is_classification": false}',
     r"line 2: instances\[0\]: missing key 'output'"),
    ('{"id": "b", "instruction": "x", "instances": [{"input": "", "output": "y"}], '
     '"is_classification": "no"}', "line 2: 'is_classification' must be bool"),
    ('{"id": "a", "instruction": "x", "instances": [{"input": "", "output": "y"}], '
     '"is_classification": false}', "line 2: duplicate id 'a'"),
    ('["a list"]', "line 2: expected a JSON object"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    good = ('{"id": "a", "instruction": "x", "instances": [{"input": "", "output": "y"}], '
            '"is_classification": false}')
    path = tmp_path / "seeds.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(SeedError, match=":2: " + message.removeprefix("line 2: ")) as info:
        load_seeds(path)
    assert str(info.value).startswith(f"{path}:2: ")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(SeedError, match="not found"):
        load_seeds(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SeedError, match="no seed tasks"):
        load_seeds(tmp_path / "empty.jsonl")


def test_bytes_that_are_not_utf8_name_the_file_line_and_byte(tmp_path):
    good = ('{"id": "a", "instruction": "x", "instances": [{"input": "", "output": "y"}], '
            '"is_classification": false}')
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(("\ufeff" + good + "\n").encode() + good.replace('"a"', '"caf\xe9"')
                     .encode("latin-1") + b"\n")
    with pytest.raises(SeedError) as info:
        load_seeds(path)
    assert str(info.value) == (f"{path}:2: not UTF-8 text (byte 0xe9 at byte 12 of the line); "
                               f"save the file as UTF-8")
    path.write_bytes(("\ufeff" + good + "\n").encode())  # a byte-order mark is fine
    (task,) = load_seeds(path)
    assert task.id == "a" and task.source == f"{path}:1"
