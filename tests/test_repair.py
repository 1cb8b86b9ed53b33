"""`selfinstruct repair`: a dataset.jsonl cut outside the program is rebuilt from the commits,
line for line, with the damaged file kept; one that was edited is left alone."""

from __future__ import annotations

import json

import pytest

from actors.cli import main
from actors.config import PipelineConfig
from actors.rundir.runlog import RunDirError, recover
from tests.test_ledger import MONEY, RAINBOW, Dir, classified, finished, propose_unit

WATER = "Describe the water cycle for a child."
RIVERS = "Name five rivers in South America."


def _run_dir(path):
    """A run that stopped with a task written out of order, failed one, and was resumed: the
    dataset is b (written at the stop, before a), a, then d; c failed."""
    d = Dir(path)
    d.ledger.sample("p", 1)
    d.ledger.proposed("p", [propose_unit(0, RAINBOW, MONEY, WATER)])
    a, b, c = d.admitted()
    d.ledger.classified("c", [classified(a), classified(b, "Yes"), classified(c)])
    _, b2, c2 = d.ledger.take("i", "instances", 3)
    d.ledger.finished("i", [finished(b2, "Class label: yes\nInput: 1")])
    d.ledger.finished("i", [finished(c2, "")])  # no instance: the task fails
    d.commit()
    d.writer.commit(d.ledger.close())  # a stop: b is written although a is not finished
    d.writer.close()
    d2 = Dir(path)  # --resume
    (a2,) = d2.ledger.take("i", "instances", 1)
    d2.ledger.finished("i", [finished(a2)])
    d2.ledger.sample("p", 1)
    d2.ledger.proposed("p", [propose_unit(1, RIVERS)])
    (t,) = d2.admitted()
    d2.ledger.classified("c", [classified(t)])
    (t2,) = d2.ledger.take("i", "instances", 1)
    d2.ledger.finished("i", [finished(t2)])
    d2.commit()
    d2.writer.close()
    (path / "run.json").write_text(json.dumps({"config": PipelineConfig().model_dump()}))
    return [a["id"], b["id"], c["id"], t["id"]]


def test_a_cut_dataset_is_refused_then_rebuilt_line_for_line(tmp_path, capsys):
    a, b, _, d = _run_dir(tmp_path)
    dataset = tmp_path / "dataset.jsonl"
    whole = dataset.read_bytes()
    assert [json.loads(x)["id"] for x in whole.splitlines()] == [b, a, d]
    cut = whole[:whole.index(b"\n") + 40]  # one whole line and a torn one
    dataset.write_bytes(cut)
    with pytest.raises(RunDirError, match=f"run `selfinstruct repair {tmp_path}`"):
        recover(tmp_path)
    assert main(["repair", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "status": "repaired", "dataset_lines": 3, "kept": 1, "rebuilt": 2,
        "damaged_copy": f"{dataset}.damaged"}
    assert dataset.read_bytes() == whole
    assert (tmp_path / "dataset.jsonl.damaged").read_bytes() == cut
    assert recover(tmp_path).lines["dataset"] == 3
    assert main(["repair", str(tmp_path)]) == 0  # nothing left to do
    assert json.loads(capsys.readouterr().out)["status"] == "intact"
    dataset.write_bytes(b"")  # emptied: rebuilt whole, the second copy kept beside the first
    assert main(["repair", str(tmp_path)]) == 0
    assert dataset.read_bytes() == whole and (tmp_path / "dataset.jsonl.damaged.1").exists()


def test_an_edited_dataset_is_left_alone(tmp_path, capsys):
    _run_dir(tmp_path)
    dataset = tmp_path / "dataset.jsonl"
    first, second, _ = dataset.read_text().splitlines(keepends=True)
    edited = first.replace("groceries", "vegetables") + second
    dataset.write_text(edited)
    assert main(["repair", str(tmp_path)]) == 2
    assert "dataset.jsonl:1: differs from the line the commits rebuild" in \
        capsys.readouterr().err
    assert dataset.read_text() == edited and not (tmp_path / "dataset.jsonl.damaged").exists()


def test_repair_needs_a_run_directory(tmp_path, capsys):
    assert main(["repair", str(tmp_path)]) == 2
    assert f"{tmp_path}: no commits.jsonl here" in capsys.readouterr().err
