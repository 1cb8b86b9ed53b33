"""The run directory without Ray or a model: commits, torn tails, recovery, idempotent writes."""

from __future__ import annotations

import json
import resource
import signal

import pytest

from actors.ids import prompt_id
from actors.llm import Completion
from actors.prompts import Shot
from actors.recovery import load_state
from actors.runlog import RunDirError, RunFiles, recover
from actors.writer import Writer
from tests.test_stages import stages

SHOTS = [Shot(f"s{i}", f"Seed instruction number {i}.") for i in range(8)]
GOOD = "Input: 2 + 2\nOutput: 4\n\nInput: 3 + 3\nOutput: 6"


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def propose_unit(k, *instructions):
    text = "\n".join(f"{9 + j}. {ins}" for j, ins in enumerate(instructions)).removeprefix("9.")
    return stages().propose_outcome(k, SHOTS, Completion(text, "stop", "m")).as_dict()


def admit(cands, first_id=0):
    """A pool decision keeping every candidate, as the pool sends it."""
    tasks = [{**c, "id": f"task_{first_id + n:06d}", "rouge": {"max": 0.1}}
             for n, c in enumerate(cands)]
    return {"accepted": {"dedup": len(tasks)}, "admitted": tasks}, tasks


def classify_unit(task, answer="No"):
    return stages().classify_outcome(task, Completion(answer, "stop", "m"))


def instance_unit(task, text=GOOD):
    return stages().instance_outcome(task, Completion(text, "stop", "m")).as_dict()


@pytest.mark.parametrize("torn_commit", [
    '{"time": 1, "lines": {"dataset"',                 # cut mid-line
    '{"time": 1, "lines": {"dataset": 1}}',            # whole but for its newline
    'x\n{"time": 1, "lines": {"dataset": 1}}\n',       # a line that does not parse ends the log
], ids=["mid_line", "no_newline", "bad_line"])
def test_commit_then_recover_cuts_a_torn_line_and_an_uncommitted_batch(tmp_path, torn_commit):
    files = RunFiles(tmp_path)
    files.commit({"dataset": [{"id": "a"}], "rejected": []}, {"counts": {"task": {"in": 1}}})
    files.commit({"dataset": [{"id": "b"}]}, {"counts": {"task": {"in": 1}}})
    files.close()
    with (tmp_path / "dataset.jsonl").open("a") as fh:
        fh.write('{"id": "c"}\n{"id": "d", "instr')  # a batch with no commit, then a torn line
    with (tmp_path / "commits.jsonl").open("a") as fh:
        fh.write(torn_commit)
    committed = recover(tmp_path)
    assert [r["id"] for r in lines(tmp_path / "dataset.jsonl")] == ["a", "b"]
    assert committed.counts == {"task": {"in": 2}} and committed.batches == 2
    assert len(lines(tmp_path / "commits.jsonl")) == 2


def test_a_file_shorter_than_its_commits_is_refused(tmp_path):
    files = RunFiles(tmp_path)
    files.commit({"dataset": [{"id": "a"}, {"id": "b"}]}, {})
    files.close()
    (tmp_path / "dataset.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(RunDirError, match="dataset.jsonl: holds 1 complete lines but"):
        recover(tmp_path)


def test_a_failed_write_leaves_the_files_as_committed(tmp_path):
    files = RunFiles(tmp_path)
    files.commit({"dataset": [{"id": "a"}]}, {})
    sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    size = sum(sizes.values())
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 64, old_limit[1]))
    try:
        with pytest.raises(RunDirError, match="file size limit was reached.*--resume"):
            files.commit({"responses": [{"id": "r", "text": "x" * 10}],
                          "dataset": [{"id": "b", "text": "y" * 4096}]}, {})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    # Cut back at once (the responses line that was written too), not only by the next recover.
    assert {p.name: p.stat().st_size for p in tmp_path.iterdir()} == sizes
    files.close()
    recover(tmp_path)
    assert [r["id"] for r in lines(tmp_path / "dataset.jsonl")] == ["a"]
    assert lines(tmp_path / "responses.jsonl") == []


def test_writer_keeps_one_copy_of_repeated_work_and_returns_the_first(tmp_path):
    w = Writer(str(tmp_path), 10, stages())
    first = propose_unit(0, "Explain how rainbows form in the sky.")
    assert w.write([first]) == [{"dup": False}]
    again = propose_unit(0, "A different answer the second time around.")
    (result,) = w.write([again])
    assert result["dup"] and [c["instruction"] for c in result["candidates"]] == [
        "Explain how rainbows form in the sky."]
    assert len(lines(tmp_path / "responses.jsonl")) == 1
    assert w.stats()["stages"]["propose"]["in"] == 1


def test_dataset_lines_follow_acceptance_order_and_counts_match_files(tmp_path):
    w = Writer(str(tmp_path), 10, stages())
    cands = propose_unit(0, "Explain how rainbows form in the sky.",
                         "Give three tips for saving money on groceries.")["candidates"]
    w.write([propose_unit(0, "Explain how rainbows form in the sky.",
                          "Give three tips for saving money on groceries.")])
    unit, (a, b) = admit(cands)
    w.write([unit])
    b2, _ = classify_unit(b)
    w.write([instance_unit(b2)])  # b finishes first: it waits for a
    assert lines(tmp_path / "dataset.jsonl") == [] and w.stats()["finished"] == 1
    a2, _ = classify_unit(a)
    w.write([instance_unit(a2)])
    assert [r["id"] for r in lines(tmp_path / "dataset.jsonl")] == [a["id"], b["id"]]
    counts = w.close()["stages"]
    assert counts["task"]["accepted"] == 2 and counts["dedup"]["accepted"] == 2
    assert counts["filter"]["accepted"] == len(lines(tmp_path / "candidates.jsonl"))


def test_recovery_sorts_work_into_done_and_pending_and_rebuilds_unwritten_tasks(tmp_path):
    w = Writer(str(tmp_path), 10, stages())
    ins = ["Explain how rainbows form in the sky.", "Give three tips for saving money.",
           "Describe the water cycle for a child.", "Name five rivers in South America."]
    w.write([propose_unit(0, *ins[:3]), propose_unit(2, ins[3])])
    cands = lines(tmp_path / "candidates.jsonl")
    unit, (a, b, c) = admit(cands[:3])
    w.write([unit])
    a2, ca = classify_unit(a)
    b2, cb = classify_unit(b)
    w.write([ca.as_dict(), cb.as_dict()])
    w.write([instance_unit(b2)])  # answered, but waits for a: not in dataset.jsonl yet
    # a crash here: nothing of the writer's memory survives
    st = load_state(tmp_path, recover(tmp_path))
    assert st.prompts == {0, 2}
    assert {k: [x["cid"] for x in v] for k, v in st.pending_candidates.items()} == {
        2: [prompt_id(2) + ".0"]}
    assert [t["id"] for t in st.classified] == [a["id"]]
    assert [t["id"] for t in st.unclassified] == [c["id"]]
    assert [t["id"] for t, _ in st.rebuild] == [b["id"]] and st.succeeded == 1
    assert st.pending() == {"candidates": 1, "unclassified": 1, "classified": 1}
    assert [(stage, t["id"]) for stage, t in st.open_tasks] == [
        ("instances", a["id"]), ("classify", c["id"])]
    # A new writer (a resume) rebuilds b's line from its recorded answer, without a model,
    # and still writes it after a.
    w2 = Writer(str(tmp_path), 10, stages())
    assert lines(tmp_path / "dataset.jsonl") == []
    w2.write([instance_unit(a2)])
    assert [r["id"] for r in lines(tmp_path / "dataset.jsonl")] == [a["id"], b["id"]]
    assert w2.write([instance_unit(b2)]) == [{"dup": True, "ok": True}]
    assert len(lines(tmp_path / "dataset.jsonl")) == 2


def test_a_stop_writes_finished_tasks_even_out_of_order(tmp_path):
    w = Writer(str(tmp_path), 10, stages())
    w.write([propose_unit(0, "Explain how rainbows form in the sky.",
                          "Give three tips for saving money on groceries.")])
    unit, (a, b) = admit(lines(tmp_path / "candidates.jsonl"))
    w.write([unit])
    w.write([instance_unit(classify_unit(b)[0])])
    assert w.close()["tasks"] == 1
    assert [r["id"] for r in lines(tmp_path / "dataset.jsonl")] == [b["id"]]
    st = load_state(tmp_path, recover(tmp_path))
    assert [t["id"] for t in st.unclassified] == [a["id"]] and st.rebuild == []


def test_one_run_at_a_time_per_directory(tmp_path):
    from actors.pipeline import RunError, lock_run_dir

    held = lock_run_dir(tmp_path)
    with pytest.raises(RunError, match="another run is using this directory"):
        lock_run_dir(tmp_path)
    held.close()
    lock_run_dir(tmp_path).close()
